"""``gotd bench ray``: sharded scoring on Ray vs the in-process pass, written to docs/benchmarks/ray.md.

Measured in one run on this machine (local Ray, ``num_cpus=2``, small object store): the in-process
c-transform pass (all torch threads, and one thread), a :class:`~gotd.server.ray.backend.RayScorer`
request with 1 and 2 workers of one torch thread each (shards already in the workers, so a request
ships only ``g``), the fixed cost of a request (a tiny pool), and the payload bytes per request. From
these figures the report builds a model of N nodes, stated as a model, not a measurement.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from gotd.lab.bench.util import best_seconds, clustered_vectors, machine
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.ray.backend import RayScorer, init_ray, require_ray
from gotd.server.ray.shard import block_rows, plan_shards
from gotd.server.selection.modes import top_k
from gotd.server.selection.scoring import ScorePass

__all__ = ["run"]

ROUNDS = 3


def _in_process(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return best_seconds(lambda: c_transform(x, y, g, eps=0.1), ROUNDS)
    finally:
        torch.set_num_threads(before)


def _ray_case(workers: int, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, k: int) -> dict[str, Any]:
    ids = [f"c{i:08d}" for i in range(x.shape[0])]
    want = top_k(calibrated_gradient(c_transform(x, y, g, eps=0.1)).numpy(), k, ids=ids)
    with RayScorer(workers=workers, shards=4 * workers) as scorer:
        started = time.perf_counter()
        got = scorer.rank(x, y, g, eps=0.1, k=k, ids=ids, snapshot="bench")
        first_s = time.perf_counter() - started
        placed = scorer.last
        # a new g per timed request: the workers keep a pass's values, a repeated g scores nothing
        fresh = iter(g + 1e-6 * i for i in range(1, 10 * ROUNDS))
        rank_s = best_seconds(
            lambda: scorer.rank(x, y, next(fresh), eps=0.1, k=k, ids=ids, snapshot="bench"), ROUNDS
        )
        rank_bytes = scorer.last
        kept_s = best_seconds(lambda: scorer.rank(x, y, g, eps=0.1, k=k, ids=ids, snapshot="bench"), ROUNDS)
        f_s = best_seconds(lambda: scorer(ScorePass(x, y, g, 0.1, "bench", lambda _d, _n: None)), ROUNDS)
        f_bytes = scorer.last
        tiny = x[:1000]
        scorer.rank(tiny, y, g, eps=0.1, k=k, ids=ids[:1000], snapshot="tiny")
        fixed_s = best_seconds(
            lambda: scorer.rank(tiny, y, g, eps=0.1, k=k, ids=ids[:1000], snapshot="tiny"), ROUNDS
        )
    pairs = x.shape[0] * y.shape[0]
    return {
        "workers": workers,
        "shards": len(plan_shards(x.shape[0], block_rows(y.shape[0]), 4 * workers)),
        "exact": got == want,
        "first_request_s": first_s,
        "placement_bytes": placed.sent,
        "rank_s": rank_s,
        "rank_kept_s": kept_s,
        "f_s": f_s,
        "fixed_s": fixed_s,
        "pairs_per_s": pairs / rank_s,
        "pairs_per_s_per_worker": pairs / rank_s / workers,
        "rank_sent": rank_bytes.sent,
        "rank_received": rank_bytes.received,
        "f_sent": f_bytes.sent,
        "f_received": f_bytes.received,
    }


def run(out_dir: Path | str, *, quick: bool = False) -> dict[str, Any]:
    """Measure, write ``out_dir/ray.md`` (and ``ray.json``), return the figures."""
    ray = require_ray()
    n, m, k = (20_000, 256, 100) if quick else (100_000, 1000, 1000)
    x = torch.from_numpy(clustered_vectors(n, 384, seed=1))
    y = torch.from_numpy(clustered_vectors(m, 384, seed=2, centers=3))
    g = 0.05 * torch.randn(m, generator=torch.Generator().manual_seed(3))
    result: dict[str, Any] = {"machine": machine(), "n": n, "m": m, "k": k, "quick": quick}
    pairs = n * m
    result["in_process_s"] = _in_process(x, y, g, torch.get_num_threads())
    result["in_process_threads"] = torch.get_num_threads()
    result["in_process_1t_s"] = _in_process(x, y, g, 1)
    result["in_process_pairs_per_s"] = pairs / result["in_process_s"]
    result["in_process_1t_pairs_per_s"] = pairs / result["in_process_1t_s"]
    started = init_ray(None, num_cpus=2, object_store_memory=300_000_000)
    try:
        result["ray_version"] = ray.__version__
        result["ray"] = [_ray_case(w, x, y, g, k) for w in (1, 2)]
    finally:
        if started:
            ray.shutdown()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ray.md").write_text(_report(result))
    return result


def _model(
    per_worker: float, fixed_s: float, n: int, m: int, k: int, nodes: int, cores: int
) -> dict[str, float]:
    """Modelled request time on ``nodes`` x ``cores`` workers (10 Gb/s network assumed)."""
    shards = nodes * cores
    net_bytes = 4 * m + shards * (12 * k + 16)
    compute = n * m / (per_worker * shards)
    network = net_bytes / (10e9 / 8)
    return {
        "nodes": nodes,
        "compute_s": compute,
        "network_s": network,
        "total_s": fixed_s + compute + network,
    }


def _report(r: dict[str, Any]) -> str:
    one, two = r["ray"]
    rows = [
        "| path | workers × threads | request (s) | pairs/s | pairs/s per worker | exact |",
        "|---|---|---|---|---|---|",
        f"| in process | 1 × {r['in_process_threads']} | {r['in_process_s']:.3f} | "
        f"{r['in_process_pairs_per_s']:.3g} | – | reference |",
        f"| in process | 1 × 1 | {r['in_process_1t_s']:.3f} | {r['in_process_1t_pairs_per_s']:.3g} | "
        f"{r['in_process_1t_pairs_per_s']:.3g} | reference |",
    ]
    for c in (one, two):
        rows.append(
            f"| Ray rank (top-k) | {c['workers']} × 1 | {c['rank_s']:.3f} | {c['pairs_per_s']:.3g} | "
            f"{c['pairs_per_s_per_worker']:.3g} | {c['exact']} |"
        )
    bytes_rows = [
        "| request | sent (driver → workers) | received (workers → driver) |",
        "|---|---|---|",
        *(
            f"| rank, {c['workers']} worker(s), {c['shards']} shards | {c['rank_sent']:,} B (g: 4·m) | "
            f"{c['rank_received']:,} B (≤ 12·k per shard, exact sums) |"
            for c in (one, two)
        ),
        f"| f, 2 workers | {two['f_sent']:,} B | {two['f_received']:,} B (4·n) |",
    ]
    per_worker = two["pairs_per_s_per_worker"]
    fixed = two["fixed_s"]
    n_model, m_model, k_model = 1_000_000_000, 1000, 50_000
    model_rows = ["| nodes × 32 workers | compute (s) | network (s) | total (s) |", "|---|---|---|---|"]
    for nodes in (1, 4, 16, 64):
        mo = _model(per_worker, fixed, n_model, m_model, k_model, nodes, 32)
        model_rows.append(
            f"| {nodes} | {mo['compute_s']:.1f} | {mo['network_s']:.3f} | {mo['total_s']:.1f} |"
        )
    return f"""# Ray: sharded scoring

`gotd bench ray{" --quick" if r["quick"] else ""}` on {r["machine"]}; Ray {r.get("ray_version", "?")} local
(`num_cpus=2`). Pool n = {r["n"]:,} × targets m = {r["m"]:,} (d = 384, float32), k = {r["k"]:,}. Best of
{ROUNDS} requests after the shards were placed (a request then ships only g; a new g each time).
The machine is shared: wall times move with its load.

{chr(10).join(rows)}

- The same g again (the workers answer from the values they kept; nothing is scored):
  {one["rank_kept_s"]:.3f} s with 1 worker, {two["rank_kept_s"]:.3f} s with 2.
- Ray `f` request (`RayScorer` as a callable: all of f comes back; the engine no longer uses it):
  {one["f_s"]:.3f} s with 1 worker, {two["f_s"]:.3f} s with 2.
- Fixed cost of a request (1,000 rows, 2 workers; two Ray round trips): {fixed * 1e3:.0f} ms.
- First request (places the shards): {one["first_request_s"]:.2f} s / {two["first_request_s"]:.2f} s,
  shipping {one["placement_bytes"] / 1e6:.0f} MB once per pool snapshot.

## Bytes per request (payload, Ray framing not counted)

{chr(10).join(bytes_rows)}

## Model of N nodes (a model built from the figures above, not a measurement)

time ≈ fixed + n·m / (workers · T) + (4·m + shards · (12·k + 16)) / bandwidth, with
T = {per_worker:.3g} pairs/s per worker (2 workers here, one torch thread each),
fixed = {fixed * 1e3:.0f} ms and 10 Gb/s.
For n = 10⁹ candidates, m = 1,000 targets, k = 50,000, one shard per worker:

{chr(10).join(model_rows)}

The model assumes workers as fast as here (one core each, memory bandwidth not shared), the shards
already placed (10⁹ × 384 float32 = 1.5 TB across the cluster: 24 GB per node at 64 nodes) and no
stragglers. It leaves out the driver's merge of shards · k pairs ({64 * 32 * k_model:,} pairs at 64
nodes: one `top_k` pass over them, seconds and GBs on one driver), which grows with the cluster.
"""
