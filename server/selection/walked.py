"""What a near-copy walk returns: the ranking it took (:class:`DistinctRanking`) and the graph of
near-copy pairs among the rows it walked (:class:`CopyGraph`), which a later walk reuses
(:mod:`gotd.server.selection.walk`).

Imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CopyGraph", "DistinctRanking"]


@dataclass(frozen=True, slots=True)
class DistinctRanking:
    """The result of a walk: what was taken and what was skipped, in walk order.

    ``taken`` holds ``(row, score)`` in rank order; ``skipped`` holds ``(row, copy_of_row, cosine)``
    for each skipped candidate (``copy_of_row`` is the taken row it is most similar to, the
    best-ranked of equals); ``taken_at`` and ``skipped_at`` are their positions in the ranking
    walked; ``exhausted`` says the walk reached the end of the eligible rows. A walk to ``k``
    contains the walk to any smaller k.
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


@dataclass(frozen=True, slots=True, eq=False)
class CopyGraph:
    """Every near-copy pair among ``rows``: what a walk learned about the rows it walked.

    Attributes
    ----------
    rows : numpy.ndarray, shape (r,), int64
        The rows tested against each other, sorted and unique.
    pairs : numpy.ndarray, shape (p, 2), int64
        The pairs of ``rows`` (smaller row first) whose cosine is at least ``cosine``.
    cosines : numpy.ndarray, shape (p,), float64
        Their cosines (recomputed exactly, see the module notes).
    cosine : float
        The threshold.
    """

    rows: np.ndarray
    pairs: np.ndarray
    cosines: np.ndarray
    cosine: float

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.pairs.nbytes + self.cosines.nbytes)

    def relabel(self, keep: np.ndarray, to: np.ndarray) -> CopyGraph:
        """The graph of the rows where ``keep`` (bool, per row of ``rows``) holds, each renamed
        ``to[i]`` (``to`` increasing over the kept rows, so the order is kept); pairs touching a
        dropped row leave."""
        index = np.full(len(self.rows), -1, dtype=np.int64)
        index[keep] = to[keep]
        ends = index[np.searchsorted(self.rows, self.pairs)] if len(self.pairs) else self.pairs
        ok = (ends >= 0).all(axis=1) if len(ends) else np.zeros(0, dtype=bool)
        return CopyGraph(index[keep], ends[ok], self.cosines[ok], self.cosine)
