"""One sharded pass, driver side: a potential scored over a placed snapshot, its values kept by the workers.

A :class:`ShardedPass` is what :meth:`gotd.server.ray.backend.RayScorer.open_pass` returns after the first
round (every shard scored its rows and sent back only the exact sum of its values). Later rounds ask
the shards for what the driver needs, never for all ``n`` values:

- :meth:`ShardedPass.top`: each shard's best ``k`` eligible rows (12 bytes a pair), merged by the one
  ranking rule (ascending score, ties by candidate id). A caller that needs more candidates (the
  near-copy walk skips some) asks again with a larger ``k``; the workers answer from their kept values.
- :meth:`ShardedPass.at`: the scores of chosen rows (4 bytes a row), for Score.

Rows are the pass's own row numbers ``0..n-1`` (the rows the snapshot was placed with).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gotd.server.ot.exact import ExactSum
from gotd.server.ray.runtime import RequestBytes
from gotd.server.ray.shard import PassSpec
from gotd.server.selection.topk import top_k

__all__ = ["ShardArgs", "ShardCall", "ShardedPass"]

#: The arguments after the shard key for the shard of rows ``[start, stop)``; None skips the shard.
ShardArgs = Callable[[int, int], tuple[Any, ...] | None]
#: Runs a worker method on every shard of the pass's snapshot (placing it again when a worker lost it);
#: results in shard order (None for skipped shards).
ShardCall = Callable[[str, ShardArgs], list[Any]]


class ShardedPass:
    """The exact total of ``f`` over ``n`` rows, and the shards' top-k or chosen scores on demand."""

    def __init__(
        self,
        call: ShardCall,
        spec: PassSpec,
        n: int,
        total: ExactSum,
        ids: Sequence[str] | None,
        stats: RequestBytes,
    ) -> None:
        self._call = call
        self._spec = spec
        self.n = n
        self.total = total
        self._total = total.to_float()
        self._ids = ids
        self.stats = stats

    @property
    def total_value(self) -> float:
        """The exact sum of ``f`` rounded once (what :func:`math.fsum` over all of ``f`` gives)."""
        return self._total

    @property
    def name(self) -> str:
        """Digest of the pass (snapshot, target set, g, eps, block rows): equal names, equal scores."""
        return self._spec.name

    def top(self, k: int | None, ineligible: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The ``k`` best rows (None: all) outside the sorted rows ``ineligible``, as ``(row, score)``.

        Exactly ``top_k(scores, k, ids=ids, eligible=...)`` of the single process: the global top-k
        under the total order (score, id) is made of each shard's top-k under that order.
        """
        skip = np.zeros(0, dtype=np.int64) if ineligible is None else np.asarray(ineligible, dtype=np.int64)

        def args(start: int, stop: int) -> tuple[Any, ...]:
            lo, hi = np.searchsorted(skip, [start, stop])
            return (self._spec, self._total, self.n, k, skip[lo:hi])

        parts = self._call("top_k", args)
        rows = np.concatenate([r for r, _ in parts])
        scores = np.concatenate([s for _, s in parts])
        self.stats.sent += skip.nbytes
        self.stats.received += rows.nbytes + scores.nbytes
        # Without ids, equal scores keep position order: shards in row order, each in rank order.
        ids = None if self._ids is None else [self._ids[int(r)] for r in rows]
        return [(int(rows[i]), score) for i, score in top_k(scores, k, ids=ids)]

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Scores of ``rows`` (any order, repeats allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"rows must be in [0, {self.n})")
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]

        def args(start: int, stop: int) -> tuple[Any, ...] | None:
            lo, hi = np.searchsorted(wanted, [start, stop])
            return None if hi == lo else (self._spec, self._total, self.n, wanted[lo:hi])

        parts = [p for p in self._call("at", args) if p is not None]
        self.stats.sent += wanted.nbytes
        out = np.empty(len(rows), dtype=parts[0].dtype if parts else np.float32)
        if parts:
            got = np.concatenate(parts)
            self.stats.received += got.nbytes
            out[order] = got
        return out
