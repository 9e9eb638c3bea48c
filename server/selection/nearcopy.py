"""Near-copy-aware top-k: walk the ranking in order and skip what repeats a candidate already taken.

Near-copies of a text (re-posted, re-cased, a boilerplate line appended, a word changed) get
near-identical scores, so a plain top-k spends budget on every copy of a good candidate. The walk
takes candidates in rank order (ascending score, ties by id) and skips one whose unit embedding has a
cosine similarity of at least ``cosine`` with a candidate already taken; the first (best-ranked) copy
is the one kept. TSDS (Liu et al., 2024) handles repeats with a kernel-density term; here they are
skipped outright, which spends the whole budget on distinct candidates.

The neighbour test is exact: each block of the ranking is multiplied against the rows taken so far
(one GEMM) and against itself, so a walk to ``k`` costs about ``k^2 d`` multiply-adds, measured faster
than growing a FAISS flat inner-product index (``gotd bench nearcopy``).

Imports torch and numpy only (no storage, no wire).

References
----------
.. [1] Z. Liu, A. Karbasi, T. Rekatsinas, "TSDS: Data Selection for Task-Specific Model
   Finetuning", NeurIPS 2024.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gotd.cache.errors import InvalidArgument
from gotd.server.selection.topk import top_k

__all__ = [
    "DEFAULT_NEAR_COPY_COSINE",
    "DistinctRanking",
    "check_near_copy_cosine",
    "distinct_top_k",
    "distinct_walk",
]

DEFAULT_NEAR_COPY_COSINE = 0.95
"""Server default threshold (see docs/evaluation.md, near-copy stress, for the measurements)."""

_BLOCK = 1024
_BLOCK_MAX = 4096


@dataclass(frozen=True, slots=True)
class DistinctRanking:
    """The result of a walk: what was taken and what was skipped, in walk order.

    ``taken`` holds ``(row, score)`` in rank order; ``skipped`` holds ``(row, copy_of_row, cosine)``
    for each skipped candidate (``copy_of_row`` is the taken row it is most similar to);
    ``taken_at`` and ``skipped_at`` are their positions in the ranking walked; ``exhausted`` says the
    walk reached the end of the eligible rows. A walk to ``k`` contains the walk to any smaller k.
    """

    taken: list[tuple[int, float]]
    skipped: list[tuple[int, int, float]]
    taken_at: np.ndarray
    skipped_at: np.ndarray
    exhausted: bool

    def prefix(self, k: int) -> DistinctRanking:
        """The walk as it was when ``k`` candidates had been taken (itself when it took fewer)."""
        if k > len(self.taken) or (k == len(self.taken) and not self.exhausted):
            return self
        end = int(self.taken_at[k - 1]) if k > 0 else -1
        n_skip = int(np.searchsorted(self.skipped_at, end))
        return DistinctRanking(
            self.taken[:k], self.skipped[:n_skip], self.taken_at[:k], self.skipped_at[:n_skip], False
        )

    def serves(self, k: int) -> bool:
        """Whether this walk answers a request for ``k`` (it took k, or saw every eligible row)."""
        return self.exhausted or len(self.taken) >= k


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
    return distinct_walk(
        lambda want: top_k(scores, want, ids=ids, eligible=eligible),
        n_eligible,
        k,
        vectors=vectors,
        cosine=cosine,
        block=block,
    )


def distinct_walk(
    ranked: Callable[[int], list[tuple[int, float]]],
    n_eligible: int,
    k: int,
    *,
    vectors: np.ndarray,
    cosine: float,
    block: int = _BLOCK,
) -> DistinctRanking:
    """The walk of :func:`distinct_top_k` over a ranking that is fetched in growing prefixes.

    ``ranked(want)`` returns the first ``want`` rows of the exact ranking of the ``n_eligible``
    eligible rows (a prefix of any longer answer), as ``(row, score)``; ``vectors`` are the rows' unit
    embeddings. The walk asks for ``k + k // 4`` (at least ``block``) rows first and doubles while
    it has taken fewer than ``k`` and rows remain, so a ranking held elsewhere (shards) is fetched a
    little past ``k``, not whole.
    """
    if not 0.0 < cosine <= 1.0:
        raise ValueError(f"cosine must be in (0, 1], got {cosine!r}")
    if not 1 <= block <= _BLOCK_MAX:
        raise ValueError(f"block must be in [1, {_BLOCK_MAX}], got {block}")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    if k <= 0:
        return DistinctRanking([], [], np.zeros(0, np.int64), np.zeros(0, np.int64), False)
    walk = _Walk(vectors, k, cosine)
    ranked_rows: list[tuple[int, float]] = []
    want = min(n_eligible, max(k + k // 4, block))
    while True:
        ranked_rows = ranked(want) if want > len(ranked_rows) else ranked_rows
        for start in range(walk.position, len(ranked_rows), block):
            walk.step(ranked_rows[start : start + block])
            if len(walk.taken) >= k:
                return walk.result(exhausted=False)
        if len(ranked_rows) >= n_eligible:
            return walk.result(exhausted=True)
        want = min(n_eligible, 2 * want)


class _Walk:
    """The rows taken so far (their embeddings in one growing buffer) and the skip records."""

    def __init__(self, vectors: np.ndarray, k: int, cosine: float) -> None:
        self.vectors = vectors
        self.k = k
        self.cosine = cosine
        self.kept = np.empty((max(k, 1) + _BLOCK_MAX, vectors.shape[1]), dtype=np.float32)
        self.taken: list[tuple[int, float]] = []
        self.skipped: list[tuple[int, int, float]] = []
        self.taken_at: list[int] = []
        self.skipped_at: list[int] = []
        self.position = 0

    def step(self, chunk: list[tuple[int, float]]) -> None:
        """Decide the next ranked rows (at most until ``k`` are taken).

        One GEMM per chunk (the chunk against the rows taken and itself); the rest is numpy, so a
        busy machine's thread barriers are paid once per chunk.
        """
        rows = np.fromiter((r for r, _ in chunk), dtype=np.int64, count=len(chunk))
        a, b = len(self.taken), len(rows)
        self.kept[a : a + b] = self.vectors[rows]
        v = self.kept[a : a + b].copy()
        sims = (torch.from_numpy(v) @ torch.from_numpy(self.kept[: a + b]).T).numpy()
        if a:
            arg_np = sims[:, :a].argmax(axis=1)
            best_np = sims[np.arange(b), arg_np]
        else:
            best_np, arg_np = np.full(b, -np.inf, dtype=np.float32), np.zeros(b, np.int64)
        gram = np.triu(sims[:, a:], 1)  # gram[i, j], i < j: j against earlier rows
        close = gram >= self.cosine
        conflicted = close.any(axis=0)
        take = best_np < self.cosine
        copy_of = arg_np.copy()
        cos = best_np.astype(np.float64)
        local = np.full(len(rows), -1, dtype=np.int64)  # in-chunk index of the copy kept, if any
        for j in np.flatnonzero(conflicted & take).tolist():
            earlier = np.flatnonzero(close[:j, j] & take[:j])
            if len(earlier):
                i = int(earlier[np.argmax(gram[earlier, j])])
                take[j] = False
                local[j], cos[j] = i, float(gram[i, j])
        order = np.cumsum(take)
        stop = len(rows) if order[-1] + a < self.k else int(np.searchsorted(order, self.k - a)) + 1
        chosen = np.flatnonzero(take[:stop])
        self.kept[a : a + len(chosen)] = v[chosen]
        self.taken.extend(chunk[j] for j in chosen.tolist())
        self.taken_at.extend((self.position + chosen).tolist())
        for j in np.flatnonzero(~take[:stop]).tolist():
            of = self.taken[int(copy_of[j])][0] if local[j] < 0 else int(rows[local[j]])
            self.skipped.append((int(rows[j]), of, float(cos[j])))
            self.skipped_at.append(self.position + j)
        self.position += stop

    def result(self, *, exhausted: bool) -> DistinctRanking:
        return DistinctRanking(
            self.taken,
            self.skipped,
            np.asarray(self.taken_at, dtype=np.int64),
            np.asarray(self.skipped_at, dtype=np.int64),
            exhausted,
        )
