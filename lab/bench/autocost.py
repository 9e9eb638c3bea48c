"""``gotd bench autocost``: what validating the cost on the target set adds to a Select.

Pools and targets are the synthetic text + embedding records of :mod:`gotd.lab.bench.costs` (no
encoder runs; the server stores each text's sketch). Six pools hold the same records. On two, Select
runs with ``cost auto`` (the validation runs, then the selection at the chosen setting); on two others,
the same request names that setting explicitly (``cost fused``, its weight and relative epsilon: the
validation is bypassed), so both solve the same problem and the ratio is the price of the validation
(with the sketch rows and factors the validation reads, which a chosen ``w = 1`` does not need); on the
last two, the request names the fixed default setting (what a server without the validation selects
with). Per pool: the cold Select (pool load, fused rows built, validation, solve, score); on the first
two, a second target set on the same pool version (fused rows cached: steady state) and repeats of the
first (dual-cache hits, the validation read from the cache). All of it twice, on a server with the
learned settings in the grid and on one with the fixed settings only. The baseline of every ratio is
measured on the same server in the same run. Written to docs/benchmarks/autocost.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gotd.client.client import Client
from gotd.lab.bench.costs import TARGET_TOPICS, Synthetic
from gotd.lab.bench.costs import text_records as records
from gotd.lab.bench.util import bench_server, machine, report_header
from gotd.server.selection.grid import FALLBACK

__all__ = ["run"]


def _select(client: Client, pool: str, targets: str, k: int, **options: Any) -> dict[str, Any]:
    started = time.perf_counter()
    _, s = client.select(pool, targets, k=k, mode="auto", **options)
    v = s.validation
    return {
        "s": time.perf_counter() - started,
        "validate_ms": s.validate_ms,
        "load_ms": s.load_ms,
        "solve_ms": s.solve_ms,
        "score_ms": s.score_ms,
        "total_ms": s.total_ms,
        "cache_hit": s.cache_hit,
        "validation_cache_hit": bool(v is not None and v.cache_hit),
        "status": v.status if v is not None else "",
        "metric": v.metric_strength if v is not None else 0.0,
        "w": s.embedding_weight,
        "eps": s.eps,
    }


def _explicit(client: Client, pool: str, targets: str, k: int) -> tuple[dict[str, Any], str]:
    """The setting ``cost auto`` chose for ``targets`` on ``pool``: explicit request options, description."""
    _, summary = client.select(pool, targets, k=k)
    v = summary.validation
    assert v is not None, "the server reported no cost validation"
    options: dict[str, Any] = {"cost": "fused", "embedding_weight": v.embedding_weight}
    if v.relative_eps is not None:
        options["relative_eps"] = v.relative_eps
    return options, v.describe()


def _scenario(client: Client, data: Synthetic, n: int, m: int, rounds: int) -> dict[str, Any]:
    """Cold runs in mirrored order (auto, explicit, default, then default, explicit, auto), each on a pool of
    its own."""
    k = max(1, n // 20)
    x, texts = data.make(n, seed=11)
    pools = ("auto-a", "explicit-a", "default-a", "default-b", "explicit-b", "auto-b")
    for pool in pools:
        client.ingest(pool, records(x, texts, "c"), batch_size=2000)
    for i, topics in enumerate(TARGET_TOPICS):
        tx, tt = data.make(m, seed=20 + i, topics=topics)
        client.put_target_set(f"targets{i}", list(records(tx, tt, f"t{i}-")))
    _warm_up(client, data)
    cold_auto = [_select(client, "auto-a", "targets0", k)]
    chosen, label = _explicit(client, "auto-a", "targets0", k)  # a cache hit: the same validation
    cold_explicit = [_select(client, "explicit-a", "targets0", k, **chosen)]
    cold_default = [_select(client, f"default-{x}", "targets0", k, **DEFAULT) for x in "ab"]
    cold_explicit.append(_select(client, "explicit-b", "targets0", k, **chosen))
    cold_auto.append(_select(client, "auto-b", "targets0", k))
    auto_steady = _select(client, "auto-a", "targets1", k)
    chosen1, label1 = _explicit(client, "auto-a", "targets1", k)
    explicit_steady = _select(client, "explicit-a", "targets1", k, **chosen1)
    steady = {"auto": auto_steady, "explicit": explicit_steady}
    cached_auto = min((_select(client, "auto-a", "targets0", k) for _ in range(rounds)), key=lambda r: r["s"])
    cached_explicit = min(
        (_select(client, "explicit-a", "targets0", k, **chosen) for _ in range(rounds)),
        key=lambda r: r["s"],
    )
    for pool in pools:
        client.delete_pool(pool)
    cold_ratio = sum(r["s"] for r in cold_auto) / sum(r["s"] for r in cold_explicit)
    default_ratio = sum(r["s"] for r in cold_auto) / sum(r["s"] for r in cold_default)
    return {
        "n": n,
        "m": m,
        "k": k,
        "chosen": label,
        "chosen_steady": label1,
        "cold": {"auto": _mean(cold_auto), "explicit": _mean(cold_explicit), "default": _mean(cold_default)},
        "cold_rounds": {"auto": cold_auto, "explicit": cold_explicit, "default": cold_default},
        "steady": steady,
        "cached": {"auto": cached_auto, "explicit": cached_explicit},
        "ratios": {
            "cold": cold_ratio,
            "cold_default": default_ratio,
            "cold_auto_first": cold_auto[0]["s"] / cold_explicit[0]["s"],
            "cold_explicit_first": cold_auto[1]["s"] / cold_explicit[1]["s"],
            "steady": steady["auto"]["s"] / steady["explicit"]["s"],
            "cached": cached_auto["s"] / cached_explicit["s"],
        },
    }


def _warm_up(client: Client, data: Synthetic) -> None:
    """One small pool selected with both kinds of request: the process's one-time start-up costs
    (thread pools, first allocations) fall on neither measured pool."""
    x, texts = data.make(2000, seed=5)
    client.ingest("warm-up", records(x, texts, "w"), batch_size=2000)
    chosen, _ = _explicit(client, "warm-up", "targets0", 100)
    _select(client, "warm-up", "targets1", 100, **chosen)
    client.delete_pool("warm-up")


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean seconds and validation milliseconds of cold runs (other fields from the first)."""
    return {
        **runs[0],
        "s": sum(r["s"] for r in runs) / len(runs),
        "validate_ms": sum(r["validate_ms"] for r in runs) / len(runs),
    }


#: The Select without validation: the fixed default setting named in the request (what ``cost auto``
#: falls back to), so it reads the same sketch rows and factors as the validated Select.
DEFAULT = {
    "cost": "fused",
    "embedding_weight": FALLBACK.embedding_weight,
    "relative_eps": FALLBACK.relative_eps,
}

#: The grids measured, each on a server of its own: the ``validation_learned_metric`` setting.
GRIDS = {"learned": True, "fixed": False}


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Run the benchmark and write ``autocost.md`` (``autocost-smoke.md`` with ``quick``) into ``out_dir``:
    the grid with the learned settings and the fixed grid alone, each against its own explicit Selects."""
    n, m, rounds = (2000, 100, 2) if quick else (100_000, 1000, 3)
    started, host = time.perf_counter(), machine()
    data = Synthetic.from_wiki()
    grids: dict[str, Any] = {}
    for grid, learned in GRIDS.items():
        with bench_server("gotd-bench-autocost-", validation_learned_metric=learned) as (_srv, client):
            grids[grid] = {"load_start": os.getloadavg()[0], **_scenario(client, data, n, m, rounds)}
    report = {"machine": host, "seconds": time.perf_counter() - started, "n": n, "m": m, "grids": grids}
    _write(out_dir, report, quick)
    return report


def _write(out_dir: Path, r: dict[str, Any], quick: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "autocost-smoke" if quick else "autocost"
    first = next(iter(r["grids"].values()))
    lines = [
        *report_header("Validated cost: what the validation adds to a Select", "autocost", r, quick),
        f"Pool {r['n']:,} synthetic text + embedding records, {r['m']:,} targets, k = {first['k']:,}, mode "
        "auto (global), in-process dual cache. `auto`: cost auto (validated); `explicit`: the chosen "
        "setting named in the request (validation bypassed); `default`: the fixed default setting "
        f"(w = {FALLBACK.embedding_weight:g}, ε = {FALLBACK.relative_eps:g} × median cost) named in the "
        "request, the Select a server without the validation runs (it reads the same sketch rows and "
        "factors; `explicit` does not when the chosen setting is w = 1, the embedding cost). All on "
        "other pools with the same records. Two "
        "servers in turn, one per grid: `learned` (server setting `validation_learned_metric` on: the "
        "fixed settings and the learned ones), `fixed` (off: the fixed settings only). Baseline of every "
        "ratio: `explicit` on the same server, same run.",
        "",
        "| grid | cold auto / explicit (goal ≤ 1.5×) | cold auto / default | cold auto s (validate ms) "
        "| cold default s | cold explicit s | cached ratio | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for grid, g in r["grids"].items():
        a, e, d = g["cold"]["auto"], g["cold"]["explicit"], g["cold"]["default"]
        lines.append(
            f"| {grid} | **{g['ratios']['cold']:.2f}×** | {g['ratios']['cold_default']:.2f}× "
            f"| {a['s']:.3f} ({a['validate_ms']:.0f}) | {d['s']:.3f} | {e['s']:.3f} "
            f"| {g['ratios']['cached']:.2f}× | {g['load_start']:.1f} |"
        )
    for grid, g in r["grids"].items():
        lines += ["", f"## Grid `{grid}`", "", *_section(g)]
    lines += ["", "Goal: cold ≤ 1.5×, cached unchanged."]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out_dir / f"{name}.json").write_text(json.dumps(r, indent=1) + "\n")


def _section(r: dict[str, Any]) -> list[str]:
    """One grid's tables."""
    lines = [
        f"Load average at the start of this grid's server: {r['load_start']:.1f}.",
        "",
        f"Chosen for the first target set: {r['chosen']}",
        "",
        f"Chosen for the second target set (the explicit `steady` request names it): {r['chosen_steady']}",
        "",
        "Cold Selects run twice each on fresh pools in mirrored order (auto, explicit, default, default, "
        "explicit, auto), after a warm-up Select on a small pool (the process's one-time start-up falls "
        "on none); the cold row is the mean of the two, the ratio the sum of the validated over the sum "
        f"of the baseline (vs explicit: auto first {r['ratios']['cold_auto_first']:.2f}×, explicit first "
        f"{r['ratios']['cold_explicit_first']:.2f}×; vs default: {r['ratios']['cold_default']:.2f}×, "
        f"default {r['cold']['default']['s']:.3f} s).",
        "",
        "| Select | auto s (validate ms) | explicit s | auto / explicit |",
        "|---|---|---|---|",
    ]
    for phase, text in (
        ("cold", "cold (pool load, fused rows, solve, score; mean of 2)"),
        ("steady", "another target set, same pool version"),
        ("cached", "repeated (dual-cache hit)"),
    ):
        a, e = r[phase]["auto"], r[phase]["explicit"]
        lines.append(
            f"| {text} | {a['s']:.3f} ({a['validate_ms']:.0f}) | {e['s']:.3f} | {r['ratios'][phase]:.2f}× |"
        )
    lines += [
        "",
        "Every cold run (ms of the server's own timings; `validate` includes the pool version's IDF "
        "weights, which the explicit request computes with the row norms between its phases, in `other`):",
        "",
        "| run | request | s | load ms | validate ms | solve ms | score ms | other ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, order in enumerate(("first", "second")):
        for kind in ("auto", "explicit", "default"):
            c = r["cold_rounds"][kind][i]
            other = c["total_ms"] - sum(c[f"{p}_ms"] for p in ("load", "validate", "solve", "score"))
            lines.append(
                f"| {order} | {kind} | {c['s']:.3f} | {c['load_ms']:.0f} | {c['validate_ms']:.0f} "
                f"| {c['solve_ms']:.0f} | {c['score_ms']:.0f} | {other:.0f} |"
            )
    lines += [
        "",
        f"Cached auto read its validation from the cache: {r['cached']['auto']['validation_cache_hit']}.",
    ]
    return lines
