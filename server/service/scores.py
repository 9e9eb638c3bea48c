"""A job's scores as the ranking step reads them: all in this process, or held by shards.

Both answer the same two questions with the one ranking rule (ascending score, ties by candidate id):
the best ``k`` eligible rows, and the scores of chosen rows. :class:`DenseScores` holds the O(n)
vector (the in-process pass, or epoch values kept in this process); :class:`ShardedScores` asks a
sharded pass whose values stay where its rows live (Ray workers), so only top-k pairs or the chosen
rows' scores reach this process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import xxhash

from gotd.server.selection.scoring import ShardedPassLike
from gotd.server.selection.topk import top_k

__all__ = ["DenseScores", "RowScores", "ShardedScores"]


class RowScores(Protocol):
    """Scores of a job's rows ``0..n-1``."""

    @property
    def digest(self) -> str:
        """Names the scores: equal digests, equal scores (keys the near-copy walks)."""

    def top(self, k: int | None, eligible: np.ndarray | None = None) -> list[tuple[int, float]]:
        """``top_k(scores, k, ids=ids, eligible=eligible)``: the ``k`` best eligible rows in rank order."""

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The scores of ``rows``, in that order."""


class DenseScores:
    """Every row's score in this process."""

    def __init__(self, scores: np.ndarray, ids: Sequence[str]) -> None:
        self.scores = scores
        self._ids = ids
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = xxhash.xxh3_128_hexdigest(np.ascontiguousarray(self.scores).tobytes())
        return self._digest

    def top(self, k: int | None, eligible: np.ndarray | None = None) -> list[tuple[int, float]]:
        return top_k(self.scores, k, ids=self._ids, eligible=eligible)

    def at(self, rows: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.scores[rows]
        return out


class ShardedScores:
    """Scores held by a sharded pass: eligibility goes to the shards as the ineligible rows."""

    def __init__(self, run: ShardedPassLike) -> None:
        self._run = run

    @property
    def digest(self) -> str:
        return self._run.name

    def top(self, k: int | None, eligible: np.ndarray | None = None) -> list[tuple[int, float]]:
        ineligible = None if eligible is None else np.flatnonzero(~eligible)
        return self._run.top(k, ineligible)

    def at(self, rows: np.ndarray) -> np.ndarray:
        return self._run.at(rows)
