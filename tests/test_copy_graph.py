"""The near-copy walk with an earlier walk's graph: the same ranking, skip records and graph as a walk
without one, whatever changed between the two walks (new rows, changed rows, another ranking, other
exclusions, other block sizes, GEMMs over narrower column blocks); the graph holds every near-copy pair
among the rows walked."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gotd.server.selection import walk as walk_module
from gotd.server.selection.nearcopy import CopyGraph, DistinctRanking, distinct_walk_graph
from gotd.server.selection.topk import top_k


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _pool(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unit rows in 8 dimensions, a third of them near copies of others."""
    v = rng.standard_normal((n, 8)).astype(np.float32)
    src = rng.integers(0, n, n // 3)
    v[: n // 3] = v[src] + 0.05 * rng.standard_normal((n // 3, 8)).astype(np.float32)
    v[n // 3 : n // 3 + n // 10] = v[rng.integers(0, n, n // 10)]  # exact copies too
    return _unit(v)


def _walk(
    scores: np.ndarray,
    vectors: np.ndarray,
    k: int,
    cosine: float,
    *,
    eligible: np.ndarray,
    block: int,
    known: CopyGraph | None = None,
) -> tuple[DistinctRanking, CopyGraph | None]:
    ids = [f"id{i:06d}" for i in range(len(scores))]
    return distinct_walk_graph(
        lambda want: top_k(scores, want, ids=ids, eligible=eligible),
        int(eligible.sum()),
        k,
        vectors=vectors,
        cosine=cosine,
        block=block,
        known=known,
    )


def _same(a: DistinctRanking, b: DistinctRanking) -> None:
    assert a.taken == b.taken
    assert a.skipped == b.skipped  # copy-of rows and cosines, bit for bit
    assert a.taken_at.tolist() == b.taken_at.tolist()
    assert a.skipped_at.tolist() == b.skipped_at.tolist()
    assert a.exhausted == b.exhausted


def _pairs(g: CopyGraph) -> dict[tuple[int, int], float]:
    return {(int(a), int(b)): float(c) for (a, b), c in zip(g.pairs, g.cosines, strict=True)}


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(5, 400),
    grow=st.floats(0.0, 0.5),
    changed=st.floats(0.0, 0.2),
    reorder=st.booleans(),
    cosine=st.sampled_from([0.9, 0.95, 0.99, 1.0]),
    blocks=st.tuples(st.sampled_from([1, 3, 16, 64, 1024]), st.sampled_from([1, 3, 16, 64, 1024])),
    narrow=st.booleans(),
)
def test_a_walk_with_the_earlier_graph_equals_one_without(
    seed: int,
    n: int,
    grow: float,
    changed: float,
    reorder: bool,
    cosine: float,
    blocks: tuple[int, int],
    narrow: bool,
) -> None:
    """``narrow``: the walk with the graph multiplies 64 columns per GEMM (its pairs come in another
    order than the walk without's)."""
    rng = np.random.default_rng(seed)
    n_new = int(n * grow)
    vectors = _pool(rng, n + n_new)
    scores = np.round(rng.standard_normal(n + n_new), 1).astype(np.float32)  # many ties
    k = int(rng.integers(1, n + 5))
    before = np.zeros(n + n_new, dtype=bool)
    before[:n] = rng.random(n) > 0.2  # the first walk: the pool before it grew, some rows excluded
    first, graph = _walk(scores, vectors, k, cosine, eligible=before, block=blocks[0])
    assert graph is not None
    walked = np.sort(np.concatenate([first.taken_at, first.skipped_at]))
    assert len(graph.rows) == len(walked)
    # the pool changes: rows move (changed rows leave the graph), the ranking may change, rows are
    # added and the exclusions differ
    moved = np.flatnonzero(rng.random(n + n_new) < changed)
    vectors[moved] = _pool(rng, max(len(moved), 5))[: len(moved)]
    keep = ~np.isin(graph.rows, moved)
    known = graph.relabel(keep, graph.rows)
    if reorder:
        scores = np.round(scores + 0.3 * rng.standard_normal(len(scores)), 1).astype(np.float32)
    eligible = rng.random(n + n_new) > 0.2
    k2 = int(rng.integers(1, n + n_new + 5))
    fresh, fresh_graph = _walk(scores, vectors, k2, cosine, eligible=eligible, block=blocks[1])
    with patch.object(walk_module, "_PRODUCT_BYTES", 256 if narrow else walk_module._PRODUCT_BYTES):
        again, again_graph = _walk(
            scores, vectors, k2, cosine, eligible=eligible, block=blocks[0], known=known
        )
    _same(again, fresh)
    assert fresh_graph is not None
    assert again_graph is not None
    assert again_graph.rows.tolist() == fresh_graph.rows.tolist()
    assert _pairs(again_graph) == _pairs(fresh_graph)
    # the graph is every pair among the rows walked, by brute force
    rows = fresh_graph.rows
    sims = vectors[rows].astype(np.float64) @ vectors[rows].astype(np.float64).T
    i, j = np.nonzero(np.triu(sims >= cosine, 1))
    expected = {(int(rows[a]), int(rows[b])) for a, b in zip(i, j, strict=True)}
    near = np.abs(sims[i, j] - cosine) < 1e-9  # rounding at the threshold itself may differ
    assert set(_pairs(fresh_graph)) ^ expected <= {
        (int(rows[a]), int(rows[b])) for a, b in zip(i[near], j[near], strict=True)
    }


def test_a_pool_of_copies_walks_without_a_graph_and_the_same_ranking() -> None:
    """Past twice k walked rows (most rows repeat), the walk tests new rows against the rows taken only
    and keeps no graph; its ranking is that of a brute-force walk all the same."""
    rng = np.random.default_rng(5)
    base = _unit(rng.standard_normal((30, 16)).astype(np.float32))
    vectors = _unit(
        base[rng.integers(0, 30, 9000)] + 0.01 * rng.standard_normal((9000, 16)).astype(np.float32)
    )
    scores = rng.standard_normal(9000).astype(np.float32)
    eligible = np.ones(9000, dtype=bool)
    walk, graph = _walk(scores, vectors, 50, 0.95, eligible=eligible, block=512)
    assert graph is None
    assert walk.exhausted
    assert len(walk.taken) < 50
    kept: list[int] = []
    for row, _ in top_k(scores, None, ids=[f"id{i:06d}" for i in range(9000)]):
        if not kept or float((vectors[kept] @ vectors[row]).max()) < 0.95:
            kept.append(row)
    assert [r for r, _ in walk.taken] == kept[:50]
