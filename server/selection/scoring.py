"""One scoring pass — the c-transform ``f`` of a target potential over pool rows — and who runs it.

:class:`ScorePass` carries the arguments once; every :class:`Scorer` (the in-process
:func:`local_scorer`, :class:`gotd.server.ray.backend.RayScorer`) takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from gotd.server.ot.rows import Rows
from gotd.server.ot.sinkhorn import c_transform

__all__ = ["ScorePass", "Scorer", "local_scorer"]


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
