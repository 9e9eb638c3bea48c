"""``gotd bench incremental``: re-selecting a grown pool with a potential epoch against a cold Select,
and the drift of the epoch's ranking against a fresh solve — written to docs/benchmarks/incremental.md.

For every growth step (1, 5, 10, 20, 50% of the pool) a pool is ingested, selected once (the cold
Select that opens the epoch), grown, and selected again four ways, all through a real server on
127.0.0.1 and the Python client:

- incremental: the epoch serves (``max_staleness`` 1), only the rows written since are scored;
- fresh: ``max_staleness`` 0, a warm-started solve of the grown pool (what every version change cost
  before epochs), whose ranking is the reference of the drift;
- cold: the grown pool with every cache dropped (the baseline of the speed-up, same run).

Drift: the overlap of the top 5% and the Spearman correlation of the whole rankings, incremental vs
fresh. Scenarios: synthetic clustered vectors at 20k x 500 (exact) and 100k x 1k (global), and the
wiki corpus (precomputed MiniLM embeddings) with the growth drawn mostly from the target's topic, the
case where the pool's distribution moves toward the target as it grows. The fused cost runs on
records with texts and precomputed embeddings (:class:`gotd.lab.bench.costs.Synthetic`: wiki word
spans per topic) at the same sizes, the growth drawn mostly from the targets' topics so that the
pool's IDF moves too: the epoch keeps the IDF it was solved under, the fresh solve uses the grown
pool's. The auto scenarios are the fused ones under cost ``auto`` (the server's default): the cold
Select validates the cost on the target set, and the grown pool's Select reuses that validation and
its setting's epoch.

Knobs (a shorter run, named in the report): ``GOTD_BENCH_INCREMENTAL_SCENARIOS`` (comma-separated
names among exact, global, wiki, fused-exact, fused-global, auto-exact, auto-global; default all),
``GOTD_BENCH_INCREMENTAL_STEPS`` (comma-separated growth percentages, default 1,5,10,20,50) and
``GOTD_BENCH_INCREMENTAL_SCALE`` (a factor on the synthetic pools' n and m, default 1).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.bench import incremental_report
from gotd.lab.bench.costs import TARGET_TOPICS, Synthetic, text_records
from gotd.lab.bench.util import bench_server, clustered_vectors, machine
from gotd.lab.demo import BackgroundServer

STEPS = (1, 5, 10, 20, 50)
TOPIC = "Physical sciences"
GROWTH_FROM_TOPIC = 0.8


Records = list[dict[str, Any]]


def _records(x: np.ndarray, ids: Sequence[str]) -> Records:
    return [{"id": i, "embedding": v.tolist()} for i, v in zip(ids, x, strict=True)]


def _select(
    client: Client, pool: str, targets: str, k: int, **options: Any
) -> tuple[list[str], SelectSummary, float]:
    started = time.perf_counter()
    ids: list[str] = []
    summary = None
    for event in client.select_stream(pool, targets, k=k, **options):
        if isinstance(event, RankedCandidate):
            ids.append(event.id)
        elif isinstance(event, SelectSummary):
            summary = event
    if summary is None:
        raise RuntimeError("the Select stream ended without a summary")
    return ids, summary, time.perf_counter() - started


def _spearman(a: list[str], b: list[str]) -> float:
    """Spearman correlation of two full rankings of the same ids."""
    rank_b = {cid: r for r, cid in enumerate(b)}
    ra = np.arange(len(a), dtype=np.float64)
    rb = np.array([rank_b[cid] for cid in a], dtype=np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def _step(
    srv: BackgroundServer,
    client: Client,
    pool: str,
    targets: str,
    base: Records,
    growth: Records,
    options: dict[str, Any],
) -> dict[str, Any]:
    client.ingest(pool, base, batch_size=2000)
    n0 = len(base)
    k = max(1, n0 // 20)
    _, opened, opened_s = _select(client, pool, targets, k, max_staleness=1.0, **options)
    client.ingest(pool, growth, batch_size=2000)
    n = n0 + len(growth)
    k = max(1, n // 20)
    _, inc, inc_s = _select(client, pool, targets, k, max_staleness=1.0, **options)
    inc_all, _, _ = _select(client, pool, targets, n, max_staleness=1.0, **options)
    _, fresh, fresh_s = _select(client, pool, targets, k, max_staleness=0.0, **options)
    fresh_all, _, _ = _select(client, pool, targets, n, max_staleness=0.0, **options)
    srv.running.duals.delete_prefix(pool)
    srv.running.engine.forget_pool(pool)
    _, cold, cold_s = _select(client, pool, targets, k, max_staleness=0.0, **options)
    client.delete_pool(pool)
    srv.running.engine.forget_pool(pool)
    if inc.solved or inc.epoch_version != opened.pool_version:
        raise RuntimeError(f"{pool}: the epoch did not serve the grown pool")
    if not (fresh.solved and cold.solved) or cold.warm_started:
        raise RuntimeError(f"{pool}: the fresh and cold Selects did not solve as asked")
    return {
        "n": n0,
        "added": len(growth),
        "mode": inc.mode,
        "opened_s": opened_s,
        "cold_s": cold_s,
        "cold_iterations": cold.iterations,
        "fresh_s": fresh_s,
        "fresh_iterations": fresh.iterations,
        "incremental_s": inc_s,
        "speedup": cold_s / inc_s,
        "fresh_speedup": cold_s / fresh_s,
        "rows_scored": inc.rows_scored,
        "staleness": inc.staleness,
        "inc_score_ms": inc.score_ms,
        "inc_load_ms": inc.load_ms,
        "inc_total_ms": inc.total_ms,
        "inc_rank_ms": inc.rank_ms,
        "cold_score_ms": cold.score_ms,
        "cold_rank_ms": cold.rank_ms,
        "cold_total_ms": cold.total_ms,
        **_validation(cold, inc),
        "overlap": len(set(inc_all[:k]) & set(fresh_all[:k])) / k,
        "spearman": _spearman(inc_all, fresh_all),
    }


def _validation(cold: SelectSummary, inc: SelectSummary) -> dict[str, Any]:
    """Cost auto: the validation's time, cold and incremental, and whether the incremental reused it."""
    if cold.validation is None or inc.validation is None or cold.validation.status != "validated":
        return {}
    return {
        "cold_validate_ms": cold.validate_ms,
        "inc_validate_ms": inc.validate_ms,
        "inc_validation_reused": inc.validation.cache_hit,
    }


def _synthetic(
    srv: BackgroundServer, client: Client, name: str, n: int, m: int, mode: str, steps: Sequence[int]
) -> list[dict[str, Any]]:
    x = clustered_vectors(int(n * (1 + max(steps) / 100)) + 1, 384, seed=1)
    ids = [f"c{i:07d}" for i in range(len(x))]
    targets = f"{name}-targets"
    client.put_target_set(targets, clustered_vectors(m, 384, seed=2, centers=3).tolist())
    rows = []
    for p in steps:
        added = n * p // 100
        base, growth = _records(x[:n], ids[:n]), _records(x[n : n + added], ids[n : n + added])
        row = _step(srv, client, f"{name}-{p}", targets, base, growth, {"mode": mode})
        rows.append({"scenario": name, "step": p, **row})
    return rows


def _wiki(srv: BackgroundServer, client: Client, steps: Sequence[int], quick: bool) -> list[dict[str, Any]]:
    """Wiki texts: targets of ``TOPIC``; the base pool holds few of its texts, the growth mostly them."""
    from gotd.lab.corpora.wiki import load_wiki
    from gotd.lab.evaluation.embed import embed_corpus
    from gotd.server.ingest.embedder import DEFAULT_MODEL_ID, Embedder

    docs = load_wiki()
    emb = embed_corpus(
        [d.id for d in docs], [d.text for d in docs], lambda: Embedder(None), model_id=DEFAULT_MODEL_ID
    ).vectors
    rng = random.Random(0)
    topic = [i for i, d in enumerate(docs) if d.topic == TOPIC]
    rest = [i for i, d in enumerate(docs) if d.topic != TOPIC]
    rng.shuffle(topic)
    rng.shuffle(rest)
    n_targets, n_base = (50, 1000) if quick else (200, 5000)
    target_rows, topic = topic[:n_targets], topic[n_targets:]
    base_topic = n_base // 50  # 2% of the base pool
    base_rows = topic[:base_topic] + rest[: n_base - base_topic]
    spare_topic, spare_rest = topic[base_topic:], rest[n_base - base_topic :]
    client.put_target_set("wiki-targets", emb[target_rows].tolist())
    rows = []
    for p in steps:
        added = n_base * p // 100
        from_topic = min(len(spare_topic), int(added * GROWTH_FROM_TOPIC))
        growth_rows = spare_topic[:from_topic] + spare_rest[: added - from_topic]
        base = _records(emb[base_rows], [docs[i].id for i in base_rows])
        growth = _records(emb[growth_rows], [docs[i].id for i in growth_rows])
        row = _step(srv, client, f"wiki-{p}", "wiki-targets", base, growth, {"mode": "exact"})
        rows.append({"scenario": "wiki", "step": p, "from_topic": from_topic, **row})
    return rows


def _fused(
    srv: BackgroundServer, client: Client, name: str, n: int, m: int, mode: str, steps: Sequence[int]
) -> list[dict[str, Any]]:
    """The fused cost on texts with precomputed embeddings; growth mostly from the targets' topics
    (``auto-*``: cost auto, validated on the target set)."""
    data = Synthetic.from_wiki()
    topics = TARGET_TOPICS[0]
    x, texts = data.make(n, seed=1)
    base = list(text_records(x, texts, "c"))
    added_max = n * max(steps) // 100
    from_topic = int(added_max * GROWTH_FROM_TOPIC)
    tx, tt = data.make(from_topic, seed=3, topics=topics)
    ox, ot = data.make(added_max - from_topic, seed=4)
    spare_topic, spare_rest = list(text_records(tx, tt, "nt")), list(text_records(ox, ot, "no"))
    targets = f"{name}-targets"
    client.put_target_set(targets, list(text_records(*data.make(m, seed=2, topics=topics), "t")))
    rows = []
    for p in steps:
        added = n * p // 100
        k_topic = int(added * GROWTH_FROM_TOPIC)
        growth = spare_topic[:k_topic] + spare_rest[: added - k_topic]
        options = {"mode": mode} if name.startswith("auto") else {"mode": mode, "cost": "fused"}
        row = _step(srv, client, f"{name}-{p}", targets, base, growth, options)
        rows.append({"scenario": name, "step": p, "from_topic": k_topic, **row})
    return rows


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Run the growth benchmark and write ``incremental.md`` (+ ``incremental.png``) into ``out_dir``."""
    chosen_steps = os.environ.get("GOTD_BENCH_INCREMENTAL_STEPS", "")
    steps = tuple(int(v) for v in chosen_steps.split(",") if v.strip()) or ((5, 20) if quick else STEPS)
    sizes = {"exact": (1500, 100), "global": (1500, 100)} if quick else {}
    sizes = {"exact": (20000, 500), "global": (100000, 1000), **sizes}
    scale = float(os.environ.get("GOTD_BENCH_INCREMENTAL_SCALE", "1"))
    every = ("exact", "global", "wiki", "fused-exact", "fused-global", "auto-exact", "auto-global")
    chosen = os.environ.get("GOTD_BENCH_INCREMENTAL_SCENARIOS", "")
    names = [s.strip() for s in chosen.split(",") if s.strip()] or list(every)
    if unknown := set(names) - set(every):
        raise ValueError(f"unknown scenarios {sorted(unknown)}; choose among {every}")
    if quick and not chosen:
        names = ["exact", "wiki", "fused-exact"]
    started, host = time.perf_counter(), machine()
    rows: list[dict[str, Any]] = []
    with bench_server() as (srv, client):
        for name in names:
            mode = name.rpartition("-")[2]
            n, m = (max(100, int(v * scale)) for v in sizes.get(mode, (0, 0)))
            if name == "wiki":
                rows += _wiki(srv, client, steps, quick)
            elif name.startswith(("fused", "auto")):
                rows += _fused(srv, client, name, n, m, mode, steps)
            else:
                rows += _synthetic(srv, client, name, n, m, mode, steps)
        bound, bound_fused = srv.running.settings.max_staleness, srv.running.settings.max_staleness_fused
    report = {
        "machine": host,
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "bound": bound,
        "bound_fused": bound_fused,
        "load_end": os.getloadavg()[0],
        "scenarios": names,
        "steps": list(steps),
        "scale": scale,
    }
    incremental_report.write(out_dir, report, quick)
    return report
