"""Near-copy-aware top-k: walk the ranking in order and skip what repeats a candidate already taken.

Near-copies of a text (re-posted, re-cased, a boilerplate line appended, a word changed) get
near-identical scores, so a plain top-k spends budget on every copy of a good candidate. The walk
takes candidates in rank order (ascending score, ties by id) and skips one whose unit embedding has a
cosine similarity of at least ``cosine`` with a candidate already taken; the first (best-ranked) copy
is the one kept. TSDS (Liu et al., 2024) handles repeats with a kernel-density term; here they are
skipped outright, which spends the whole budget on distinct candidates.

The neighbour test is exact: each block of the ranking is multiplied against the rows walked so far
(one GEMM), so a walk to ``k`` costs about ``k^2 d / 2`` multiply-adds, measured faster than growing a
FAISS flat inner-product index (``gotd bench nearcopy``). The pairs found are kept as a graph
(:class:`~gotd.server.selection.walk.CopyGraph`) that a later walk over a ranking sharing most rows
with it reuses, multiplying only its new rows (:func:`distinct_walk_graph`).

Imports torch and numpy only (no storage, no wire).

References
----------
.. [1] Z. Liu, A. Karbasi, T. Rekatsinas, "TSDS: Data Selection for Task-Specific Model
   Finetuning", NeurIPS 2024.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import numpy as np

from gotd.cache.errors import InvalidArgument
from gotd.server.selection.topk import top_k
from gotd.server.selection.walk import CopyGraph, DistinctRanking, Walk

__all__ = [
    "DEFAULT_NEAR_COPY_COSINE",
    "CopyGraph",
    "DistinctRanking",
    "check_near_copy_cosine",
    "distinct_top_k",
    "distinct_walk_graph",
]

DEFAULT_NEAR_COPY_COSINE = 0.95
"""Server default threshold (see docs/evaluation.md, near-copy stress, for the measurements)."""

_BLOCK = 1024
_BLOCK_MAX = 4096
_MIN_BLOCK = 64


def check_near_copy_cosine(cosine: float) -> float:
    """``cosine`` if it is a valid near-copy threshold: 0 (off) or in (0, 1]."""
    if not (math.isfinite(cosine) and 0.0 <= cosine <= 1.0):
        raise InvalidArgument(f"near_copy_cosine must be 0 (off) or in (0, 1], got {cosine!r}")
    return cosine


def distinct_top_k(
    scores: np.ndarray,
    k: int,
    *,
    vectors: np.ndarray,
    cosine: float,
    ids: Sequence[str] | None = None,
    eligible: np.ndarray | None = None,
    block: int = _BLOCK,
) -> DistinctRanking:
    """The ``k`` best rows of ``scores`` of which no two have embeddings within ``cosine`` of each other.

    Walking the exact ranking of :func:`~gotd.server.selection.topk.top_k` in order, row ``j`` is
    taken unless

    .. math::

        \\max_{i \\in T} \\langle v_i, v_j \\rangle \\ge \\text{cosine},

    with :math:`T` the rows taken before it. The ranking is extended (doubling) until ``k`` rows are
    taken or the eligible rows run out, so fewer than ``k`` come back only when there are not ``k``
    distinct candidates.

    Parameters
    ----------
    scores : numpy.ndarray, shape (n,)
        Scores (lower is better).
    k : int
        Candidates to take (>= 0).
    vectors : numpy.ndarray, shape (n, d)
        Unit embeddings of the rows (float32; any float is converted per block).
    cosine : float
        Threshold in (0, 1].
    ids : sequence of str, length n, optional
        Candidate ids that break score ties (the best-ranked copy is then the smallest id).
    eligible : numpy.ndarray of bool, shape (n,), optional
        Rows that may be taken; all when None.
    block : int
        Ranked rows tested per GEMM.

    Returns
    -------
    DistinctRanking
    """
    if vectors.ndim != 2 or vectors.shape[0] != scores.shape[0]:
        raise ValueError(f"vectors must have shape ({scores.shape[0]}, d), got {vectors.shape}")
    n_eligible = scores.shape[0] if eligible is None else int(np.count_nonzero(eligible))
    return distinct_walk_graph(
        lambda want: top_k(scores, want, ids=ids, eligible=eligible),
        n_eligible,
        k,
        vectors=vectors,
        cosine=cosine,
        block=block,
    )[0]


def distinct_walk_graph(
    ranked: Callable[[int], list[tuple[int, float]]],
    n_eligible: int,
    k: int,
    *,
    vectors: np.ndarray,
    cosine: float,
    block: int = _BLOCK,
    known: CopyGraph | None = None,
    vector_rows: np.ndarray | None = None,
) -> tuple[DistinctRanking, CopyGraph | None]:
    """The walk of :func:`distinct_top_k` over a ranking fetched in growing prefixes, given the graph
    of an earlier walk, returning its own.

    ``ranked(want)`` returns the first ``want`` rows of the exact ranking of the ``n_eligible``
    eligible rows (a prefix of any longer answer), as ``(row, score)``; ``vectors`` are the rows' unit
    embeddings. The walk asks for ``k + k // 4`` (at least ``block``) rows first and doubles while
    it has taken fewer than ``k`` and rows remain, so a ranking held elsewhere (shards) is fetched a
    little past ``k``, not whole.

    ``known`` holds every near-copy pair among some rows (an earlier walk's graph over the same
    vectors and threshold): pairs of two of its rows are read from it, and only rows new to it are
    multiplied against the rows walked, so a walk over a ranking that mostly repeats an earlier one
    costs in proportion to what is new. The result is the same as without it. ``vector_rows`` maps a
    ranked row to its row of ``vectors`` (identity when None). The graph returned holds every pair
    among the rows this walk walked (None when it walked too far past ``k`` to keep one; see
    :mod:`gotd.server.selection.walk`).
    """
    if not 0.0 < cosine <= 1.0:
        raise ValueError(f"cosine must be in (0, 1], got {cosine!r}")
    if not 1 <= block <= _BLOCK_MAX:
        raise ValueError(f"block must be in [1, {_BLOCK_MAX}], got {block}")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    if k <= 0:
        empty = DistinctRanking([], [], np.zeros(0, np.int64), np.zeros(0, np.int64), False)
        return empty, None
    with ExitStack() as scratch:  # the walk's buffers go back to the scratch slots when it ends
        return _walk(
            Walk(vectors, k, cosine, scratch, known=known, vector_rows=vector_rows), ranked, n_eligible, block
        )


def _walk(
    walk: Walk, ranked: Callable[[int], list[tuple[int, float]]], n_eligible: int, block: int
) -> tuple[DistinctRanking, CopyGraph | None]:
    """Run ``walk`` over the prefixes of ``ranked`` (see :func:`distinct_walk_graph`)."""
    k = walk.k
    ranked_rows: list[tuple[int, float]] = []
    want = min(n_eligible, max(k + k // 4, block))
    while True:
        ranked_rows = ranked(want) if want > len(ranked_rows) else ranked_rows
        walk.look_ahead(ranked_rows)
        while walk.position < len(ranked_rows):
            start = walk.position
            # a block no longer than the rows still to take (what follows the k-th is never paired),
            # ending where the rows paired ahead end
            stop = min(len(ranked_rows), start + min(block, max(k - len(walk.taken), _MIN_BLOCK)))
            walk.step(ranked_rows[start : min(stop, walk.ahead_end) if start < walk.ahead_end else stop])
            if len(walk.taken) >= k:
                return walk.result(exhausted=False), walk.graph()
        if len(ranked_rows) >= n_eligible:
            return walk.result(exhausted=True), walk.graph()
        want = min(n_eligible, 2 * want)
