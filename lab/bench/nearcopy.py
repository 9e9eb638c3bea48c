"""``gotd bench nearcopy``: what near-copy skipping costs a Select, and how its neighbour test is done.

1. **Walk**: the near-copy walk to k = 5% of a 100,000-row pool (384-d, 10% of the rows with 4
   near-copies each), in process, against the plain top-k of the same scores: the blockwise GEMM walk
   of :func:`gotd.server.selection.nearcopy.distinct_top_k` (several block sizes) and the same walk
   with its neighbour queries answered by a FAISS flat inner-product index grown with the returned
   rows. Both return the same ranking (checked).
2. **Service**: a real server on 127.0.0.1 with that pool and 1,000 targets, Selects with the server
   default (near-copies skipped) and with ``near_copy_cosine=0``, alternating: cold (a target set not
   seen before: solve + score + rank), cached (repeated: dual-cache hit, the walk reused) and cached
   with a new exclusion set (dual-cache hit, a new walk). The baseline of each ratio is the Select
   with skipping off measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.bench.util import bench_server, best_seconds, clustered_vectors, machine, report_header
from gotd.server.selection.nearcopy import DEFAULT_NEAR_COPY_COSINE, distinct_top_k, distinct_walk_graph
from gotd.server.selection.topk import top_k

__all__ = ["faiss_walk", "pool_with_copies", "run"]


def pool_with_copies(n: int, *, share: float = 0.1, copies: int = 4, seed: int = 1) -> np.ndarray:
    """``n`` unit rows: clustered vectors of which ``share`` get ``copies`` near-copies (cosine ~0.99)."""
    base = clustered_vectors(round(n / (1 + share * copies)), 384, seed=seed)
    rng = np.random.default_rng(seed + 1)
    src = rng.choice(len(base), size=n - len(base), replace=True) if n > len(base) else np.zeros(0, int)
    noise = rng.standard_normal((len(src), base.shape[1])).astype(np.float32) * (0.1 / np.sqrt(base.shape[1]))
    extra = base[src] + noise
    x = np.concatenate([base, extra / np.linalg.norm(extra, axis=1, keepdims=True)]).astype(np.float32)
    return x[rng.permutation(len(x))]


def faiss_walk(
    scores: np.ndarray, k: int, vectors: np.ndarray, cosine: float, block: int = 1024
) -> list[int]:
    """The near-copy walk with neighbour queries through a FAISS ``IndexFlatIP`` of the rows taken."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    ranked = [r for r, _ in top_k(scores, min(len(scores), 2 * k))]
    taken: list[int] = []
    for start in range(0, len(ranked), block):
        rows = np.asarray(ranked[start : start + block])
        v = np.ascontiguousarray(vectors[rows])
        best = index.search(v, 1)[0][:, 0] if index.ntotal else np.full(len(rows), -np.inf)
        gram = v @ v.T
        kept: list[int] = []
        for j in range(len(rows)):
            if best[j] < cosine and not (kept and gram[j, kept].max() >= cosine):
                kept.append(j)
                taken.append(int(rows[j]))
                if len(taken) == k:
                    return taken
        index.add(v[kept])
    return taken


def _walk_bench(n: int, k: int, rounds: int) -> dict[str, Any]:
    x = pool_with_copies(n)
    target = clustered_vectors(1, 384, seed=2)[0]
    scores = -(x @ target).astype(np.float32)  # copies get near-identical scores, as under GOT-D
    cos = DEFAULT_NEAR_COPY_COSINE
    walk = distinct_top_k(scores, k, vectors=x, cosine=cos)
    assert [r for r, _ in walk.taken] == faiss_walk(scores, k, x, cos), "FAISS and GEMM walks disagree"
    out: dict[str, Any] = {"n": n, "k": k, "skipped": len(walk.skipped)}
    out["topk_s"] = best_seconds(lambda: top_k(scores, k), rounds)
    for block in (512, 1024, 2048):
        out[f"gemm_{block}_s"] = best_seconds(
            partial(distinct_top_k, scores, k, vectors=x, cosine=cos, block=block), rounds
        )
    out["faiss_s"] = best_seconds(lambda: faiss_walk(scores, k, x, cos), rounds)
    before = np.arange(n) < n - n // 20  # the pool before its last 5% of rows arrived
    _, graph = distinct_walk_graph(
        lambda want: top_k(scores, want, eligible=before), int(before.sum()), k, vectors=x, cosine=cos
    )
    regraphed = distinct_walk_graph(
        lambda want: top_k(scores, want), n, k, vectors=x, cosine=cos, known=graph
    )
    assert regraphed[0].taken == walk.taken, "the walk given a graph differs from the walk without"
    out["graph_s"] = best_seconds(
        lambda: distinct_walk_graph(
            lambda want: top_k(scores, want), n, k, vectors=x, cosine=cos, known=graph
        ),
        rounds,
    )
    return out


def _select(client: Client, targets: str, k: int, **options: Any) -> dict[str, Any]:
    started = time.perf_counter()
    summary = None
    returned = 0
    for event in client.select_stream("pool", targets, k=k, **options):
        if isinstance(event, RankedCandidate):
            returned += 1
        elif isinstance(event, SelectSummary):
            summary = event
    assert summary is not None
    return {
        "seconds": time.perf_counter() - started,
        "server_ms": summary.total_ms,
        "rank_ms": summary.rank_ms,
        "iterations": summary.iterations,
        "cache_hit": summary.cache_hit,
        "skipped": summary.near_copies_skipped,
        "returned": returned,
    }


def _service_bench(n: int, m: int, k: int, pairs: int) -> dict[str, Any]:
    x = pool_with_copies(n)
    with bench_server() as (_srv, client):
        client.ingest(
            "pool", ({"id": f"c{i:07d}", "embedding": v.tolist()} for i, v in enumerate(x)), batch_size=2000
        )
        del x
        modes = {"on": {}, "off": {"near_copy_cosine": 0.0}}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            s: {"cold": [], "cached": [], "new_exclusion": []} for s in modes
        }
        for i in range(pairs):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for side in order:
                name = f"t-{side}-{i}"
                client.put_target_set(
                    name, clustered_vectors(m, 384, seed=10 + 2 * i + (side == "on"), centers=3).tolist()
                )
                runs[side]["cold"].append(_select(client, name, k, **modes[side]))
            for side in order:
                name = f"t-{side}-{i}"
                runs[side]["cached"].append(
                    min(
                        (_select(client, name, k, **modes[side]) for _ in range(3)),
                        key=lambda r: r["seconds"],
                    )
                )
                runs[side]["new_exclusion"].append(
                    _select(client, name, k, exclude_ids=[f"c{i:07d}"], **modes[side])
                )
    out: dict[str, Any] = {"n": n, "m": m, "k": k, "pairs": pairs}
    for kind in ("cold", "cached", "new_exclusion"):
        on = runs["on"][kind]
        off = runs["off"][kind]
        out[kind] = {
            "on_s": statistics.median(r["seconds"] for r in on),
            "off_s": statistics.median(r["seconds"] for r in off),
            "on_rank_ms": statistics.median(r["rank_ms"] for r in on),
            "off_rank_ms": statistics.median(r["rank_ms"] for r in off),
            "on_iterations": [r["iterations"] for r in on],
            "off_iterations": [r["iterations"] for r in off],
            "cache_hit": all(r["cache_hit"] for r in on + off)
            if kind != "cold"
            else any(r["cache_hit"] for r in on + off),
            "skipped": statistics.median(r["skipped"] for r in on),
            "returned": min(r["returned"] for r in on + off),
        }
        out[kind]["ratio"] = out[kind]["on_s"] / out[kind]["off_s"]
    return out


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Run both parts and write ``nearcopy.md`` (``nearcopy-smoke.md`` with ``quick``) into ``out_dir``."""
    n, m = (3000, 100) if quick else (100_000, 1000)
    k = n // 20
    started, host = time.perf_counter(), machine()
    walk = _walk_bench(n, k, rounds=1 if quick else 3)
    service = _service_bench(n, m, k, pairs=1 if quick else 3)
    report = {"machine": host, "seconds": time.perf_counter() - started, "walk": walk, "service": service}
    _write(out_dir, report, quick)
    return report


def _write(out_dir: Path, report: dict[str, Any], quick: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    w, s = report["walk"], report["service"]
    name = "nearcopy-smoke" if quick else "nearcopy"
    lines = [
        *report_header("Near-copy skipping: cost of the walk and of a Select", "nearcopy", report, quick),
        f"Pool: {w['n']:,} synthetic clustered 384-d unit vectors, 10% of them with 4 near-copies "
        f"(cosine ~0.99); k = {w['k']:,} (5%); threshold {DEFAULT_NEAR_COPY_COSINE} (the server default).",
        "",
        "## The walk, in process (best of 3)",
        "",
        f"Scores: minus the cosine to one direction (copies score alike, as under GOT-D); "
        f"{w['skipped']:,} near-copies skipped on the way to k. "
        "Baseline: the plain top-k of the same scores.",
        "",
        "| neighbour test | s | vs plain top-k |",
        "|---|---:|---:|",
        f"| none (plain top-k, copies kept) | {w['topk_s']:.4f} | 1× |",
        *[
            _walk_row(f"GEMM against the rows walked, blocks of {b}", w[f"gemm_{b}_s"], w)
            for b in (512, 1024, 2048)
        ],
        _walk_row(
            "GEMM, given the graph of the walk before the last 5% of rows arrived (only new rows multiplied)",
            w["graph_s"],
            w,
        ),
        _walk_row("FAISS `IndexFlatIP` grown with the rows taken, blocks of 1024", w["faiss_s"], w),
        "",
        f"## Select through the service ({s['n']:,} × {s['m']:,}, k = {s['k']:,}; "
        f"median of {s['pairs']} per cell)",
        "",
        "Alternating on/off; *cold*: a target set not seen before (solve + score + rank); *cached*: the "
        "same Select repeated (best of 3; dual-cache hit and the walk reused); *new exclusion*: a cache "
        "hit with an exclusion set not seen before (the walk runs again, over the graph of the "
        "walk before: only the rows past that walk's end, where it must go further, are multiplied). "
        "`rank ms` is the server's ranking stage "
        "(`Summary.timings.rank_ms`).",
        "",
        "| Select | skipping off s (rank ms) | skipping on s (rank ms) | on / off | goal "
        "| near-copies skipped |",
        "|---|---:|---:|---:|---|---:|",
    ]
    goals = {"cold": "≤ 1.1×", "cached": "≤ 1.5×", "new_exclusion": "—"}
    for kind, label in (
        ("cold", "cold"),
        ("cached", "cached"),
        ("new_exclusion", "cached, new exclusion set"),
    ):
        r = s[kind]
        lines.append(
            f"| {label} | {r['off_s']:.3f} ({r['off_rank_ms']:.0f}) "
            f"| {r['on_s']:.3f} ({r['on_rank_ms']:.0f}) "
            f"| **{r['ratio']:.2f}×** | {goals[kind]} | {r['skipped']:.0f} |"
        )
    lines += [
        "",
        f"Cold solves (iterations, on / off): {s['cold']['on_iterations']} / {s['cold']['off_iterations']}.",
        "",
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines))


def _walk_row(label: str, seconds: float, w: dict[str, Any]) -> str:
    return f"| {label} | {seconds:.3f} | {seconds / w['topk_s']:.0f}× |"
