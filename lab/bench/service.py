"""``gotd bench service``: the service end to end — cold vs cached Select, a grown pool, first-batch
latency and concurrent throughput, and the fused cost against the embedding cost
(:mod:`gotd.lab.bench.costs`) — written to docs/benchmarks/service.md with plots.

Everything runs through a real server on 127.0.0.1 and the Python client, with precomputed
embeddings (synthetic clustered unit vectors), so the numbers measure the service, not the encoder.
Baselines are measured in the same run: the cold Select is the baseline of the cached and the
grown-pool Select.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.bench import costs as bench_costs
from gotd.lab.bench import costs_report as bench_costs_report
from gotd.lab.bench.util import bench_server, clustered_vectors, machine, report_header


def _records(x: np.ndarray, prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:07d}", "embedding": v.tolist()} for i, v in enumerate(x)]


def _select(
    client: Client, pool: str, targets: str | list[list[float]], k: int, mode: str
) -> dict[str, float]:
    started = time.perf_counter()
    first = None
    summary = None
    for event in client.select_stream(pool, targets, k=k, mode=mode):
        if isinstance(event, RankedCandidate):
            first = first or time.perf_counter() - started
        elif isinstance(event, SelectSummary):
            summary = event
    assert summary is not None
    return {
        "seconds": time.perf_counter() - started,
        "first_batch_seconds": first or 0.0,
        "iterations": float(summary.iterations),
        "cache_hit": float(summary.cache_hit),
        "warm_started": float(summary.warm_started),
        "rows_scored": float(summary.rows_scored),
        "solved": float(summary.solved),
    }


def _scenario(client: Client, name: str, n: int, m: int, mode: str, k: int) -> dict[str, Any]:
    x = clustered_vectors(int(n * 1.05), 384, seed=1)
    base, extra = x[:n], x[n:]
    inline = clustered_vectors(m, 384, seed=2, centers=3).tolist()
    client.ingest(name, _records(base, "c"), batch_size=2000)
    targets = f"{name}-targets"  # a named, stored target set: what repeated selection uses
    client.put_target_set(targets, inline)
    cold = _select(client, name, targets, k, mode)
    cached = [_select(client, name, targets, k, mode) for _ in range(3)]
    cached_inline = min(_select(client, name, inline, k, mode)["seconds"] for _ in range(3))
    client.ingest(name, _records(extra, "n"), batch_size=2000)
    grown = _select(client, name, targets, k, mode)
    best_cached = min(c["seconds"] for c in cached)
    return {
        "scenario": name,
        "n": n,
        "m": m,
        "mode": mode,
        "cold_s": cold["seconds"],
        "cold_iterations": cold["iterations"],
        "cold_first_batch_s": cold["first_batch_seconds"],
        "cached_s": best_cached,
        "cached_first_batch_s": min(c["first_batch_seconds"] for c in cached),
        "cache_hit": all(c["cache_hit"] for c in cached),
        "cached_speedup": cold["seconds"] / best_cached,
        "cached_inline_s": cached_inline,
        "grown_s": grown["seconds"],
        "grown_iterations": grown["iterations"],
        "grown_warm_started": bool(grown["warm_started"]),
        "grown_rows_scored": int(grown["rows_scored"]),
        "grown_solved": bool(grown["solved"]),
        "grown_speedup": cold["seconds"] / grown["seconds"],
    }


def _concurrency(client_address: str, pool: str, m: int, clients: int, requests: int) -> dict[str, Any]:
    targets = [clustered_vectors(m, 384, seed=100 + i, centers=2).tolist() for i in range(4)]

    def one(i: int) -> float:
        with Client(client_address, timeout=600) as c:
            started = time.perf_counter()
            c.select(pool, targets[i % len(targets)], k=100, mode="auto")
            return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool_exec:
        latencies = list(pool_exec.map(one, range(requests)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": wall,
        "rps": requests / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": float(np.quantile(latencies, 0.99)),
    }


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Run the service benchmark and write ``service.md`` (+ ``service.png``) into ``out_dir``."""
    scenarios = (
        [("exact", 1500, 100, "exact")]
        if quick
        else [("exact", 20000, 500, "exact"), ("global", 100000, 1000, "global")]
    )
    results: list[dict[str, Any]] = []
    started, host = time.perf_counter(), machine()
    with bench_server() as (srv, client):
        for name, n, m, mode in scenarios:
            results.append(_scenario(client, name, n, m, mode, k=max(1, n // 20)))
        m_conc, requests = (50, 16) if quick else (200, 64)
        conc = _concurrency(srv.address, scenarios[0][0], m_conc, 8, requests)
        costs = bench_costs.run(client, quick=quick)
    seconds = time.perf_counter() - started
    report = {"machine": host, "seconds": seconds, "scenarios": results, "concurrency": conc, "costs": costs}
    _write(out_dir, report, quick)
    return report


def _write(out_dir: Path, report: dict[str, Any], quick: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "service-smoke" if quick else "service"
    lines = [
        *report_header("Service benchmark: cold vs cached vs grown pool", "service", report, quick),
        "Real server on 127.0.0.1, Python client, in-process dual cache, precomputed 384-d embeddings",
        "(synthetic clustered unit vectors), k = 5% of the pool, streamed to the client. The target set is",
        "stored once (PutTargetSet) and named in each Select; `cached inline` sends the same targets'",
        "vectors inside every request instead (a cache hit too: same content hash). The baseline of every",
        "ratio is the cold Select measured in the same run. `pool +5%`: the pool grown by 5% and selected",
        "again with the server's default staleness bound (the potential epoch serves, only the new rows",
        "are scored; growth steps and drift in [incremental.md](incremental.md)).",
        "",
        "| scenario | n × m | mode | cold s (iters) | cached s | cached speed-up (goal ≥20×) "
        "| cached inline s | pool +5% s (rows scored) | grown speed-up (goal ≥10×) "
        "| first batch cold / cached s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["scenarios"]:
        lines.append(
            f"| {r['scenario']} | {r['n']:,} × {r['m']:,} | {r['mode']} "
            f"| {r['cold_s']:.2f} ({r['cold_iterations']:.0f}) | {r['cached_s']:.3f} "
            f"| {r['cached_speedup']:.1f}× | {r['cached_inline_s']:.3f} "
            f"| {r['grown_s']:.3f} ({r['grown_rows_scored']:,}, "
            f"{'solved' if r['grown_solved'] else 'epoch reused'}) "
            f"| {r['grown_speedup']:.1f}× | {r['cold_first_batch_s']:.2f} / {r['cached_first_batch_s']:.3f} |"
        )
    c = report["concurrency"]
    lines += [
        "",
        f"Concurrency: {c['clients']} clients, {c['requests']} Selects (4 target sets, cached after the "
        f"first of each) on the first scenario's pool: {c['rps']:.1f} Selects/s, p50 {c['p50_s']:.3f} s, "
        f"p99 {c['p99_s']:.3f} s, wall {c['wall_s']:.1f} s.",
        "",
        f"![cold vs cached]({name}.png)",
        "",
        "Re-selection after growth of 1-50% against cold, and the drift of a potential epoch against a",
        "fresh solve, are measured by `gotd bench incremental`: [incremental.md](incremental.md).",
        *bench_costs_report.section(report["costs"], name),
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines))
    bench_costs_report.plot(out_dir / f"{name}-costs.png", report["costs"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [r["scenario"] for r in report["scenarios"]]
    xs = np.arange(len(labels))
    for offset, key, label in (
        (-0.25, "cold_s", "cold"),
        (0.0, "grown_s", "pool +5%"),
        (0.25, "cached_s", "cached"),
    ):
        ax.bar(xs + offset, [r[key] for r in report["scenarios"]], width=0.25, label=label)
    ax.set_xticks(xs, labels)
    ax.set_yscale("log")
    ax.set_ylabel("Select wall time (s, log)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=120)
    plt.close(fig)
