"""One scoring pass — the c-transform ``f`` of a target potential over pool rows — and who runs it.

:class:`ScorePass` carries the arguments once; every :class:`Scorer` (the in-process
:func:`local_scorer`, :class:`gotd.server.ray.backend.RayScorer`) takes it. A :class:`ShardedScorer`
(the Ray one) can also keep a pass's values where its rows live and answer top-k questions from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from gotd.server.ot.rows import Rows, take
from gotd.server.ot.sinkhorn import RUN_BLOCK_BYTES, block_rows, c_transform, c_transform_span

__all__ = [
    "ScorePass",
    "Scorer",
    "ShardedPassLike",
    "ShardedScorer",
    "local_scorer",
    "row_span",
    "run_block_rows",
    "score_rows",
]


@dataclass(frozen=True, slots=True)
class ScorePass:
    """The c-transform ``f`` (n,) of ``g`` (m,) over pool rows ``x`` (n, d) against targets ``y`` (m, d).

    ``snapshot`` names the rows (pool, uid, version and row selection), so a distributed scorer
    can keep the pool's shards where they are and ship only ``g`` per request. ``callback(done,
    total)`` is called after each block and may raise to stop the work.
    """

    x: Rows
    y: torch.Tensor
    g: torch.Tensor
    eps: float
    snapshot: str
    callback: Callable[[int, int], None]


class Scorer(Protocol):
    """Runs a :class:`ScorePass` and returns ``f`` (n,)."""

    def __call__(self, work: ScorePass, /) -> torch.Tensor: ...


def local_scorer(work: ScorePass, /) -> torch.Tensor:
    """The in-process scorer: one blockwise c-transform pass."""
    return c_transform(work.x, work.y, work.g, eps=work.eps, callback=work.callback)


def score_rows(x: Rows, rows: np.ndarray, y: torch.Tensor, g: torch.Tensor, *, eps: float) -> np.ndarray:
    """The c-transform of ``g`` for the rows ``rows`` of ``x`` (float32, the bits of a full pass): a
    run of consecutive rows (those appended to a pool since an epoch) read in place, others gathered;
    in blocks of ``RUN_BLOCK_BYTES`` of cost (one small buffer for them all)."""
    span = row_span(rows)
    block = run_block_rows(y)
    if span is not None and isinstance(x, torch.Tensor):
        out = c_transform_span(x, span.start, span.stop, y, g, eps=eps, block_size=block)
    else:
        out = c_transform(take(x, torch.from_numpy(rows)), y, g, eps=eps, block_size=block)
    values: np.ndarray = out.numpy()
    return values


def run_block_rows(y: torch.Tensor) -> int:
    """Rows per block of a c-transform over the rows written since an epoch (``RUN_BLOCK_BYTES``)."""
    return block_rows(y.shape[0], y.element_size(), RUN_BLOCK_BYTES)


def row_span(rows: np.ndarray) -> slice | None:
    """``rows`` as a slice when they are one run of consecutive rows in order, else None."""
    if not len(rows) or int(rows[-1]) - int(rows[0]) + 1 != len(rows) or not (np.diff(rows) == 1).all():
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1)


class ShardedPassLike(Protocol):
    """A pass whose values stay on the shards (:class:`gotd.server.ray.sharded.ShardedPass`)."""

    @property
    def name(self) -> str:
        """Digest of the pass: equal names, equal scores."""

    @property
    def total_value(self) -> float:
        """The exactly rounded sum of the pass's values (the calibrated gradient's sum)."""

    def top(self, k: int | None, ineligible: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The ``k`` best rows (by calibrated gradient, ties by id) outside the sorted rows ``ineligible``."""

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The scores of ``rows``, in that order."""


@runtime_checkable
class ShardedScorer(Protocol):
    """A scorer that keeps a pass's values on its shards; only the exact total comes back at first."""

    def open_pass(self, work: ScorePass, ids: Sequence[str] | None, /) -> ShardedPassLike:
        """Score ``work`` on the shards (``ids`` break ties); the values stay there."""
