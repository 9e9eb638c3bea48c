"""The settings the validated cost chooses among (:mod:`gotd.server.selection.validation`).

A setting is the fused cost's embedding weight ``w``, epsilon relative to that cost's scale, and the
strength of a metric learned from the target set, a discriminant direction
(:mod:`gotd.server.selection.metric`; 0 is the plain fused cost). The grids and the fallback are chosen
by measurement (docs/evaluation.md, "Validated cost" and "Learned metric").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_GRID", "FALLBACK", "FIXED_GRID", "LEARNED_SETTINGS", "Setting"]


@dataclass(frozen=True, slots=True, order=True)
class Setting:
    """One point of the grid.

    Attributes
    ----------
    embedding_weight : float
        ``w`` in [0, 1]: 0 is the pure n-gram (sketch) cost, 1 the pure embedding cost.
    relative_eps : float
        Epsilon as this multiple of the median pool-target cost of that fused cost.
    metric_strength : float
        ``lambda >= 0`` of the metric learned along a discriminant direction
        (:func:`gotd.server.selection.metric.fit_metric`); 0: none (the plain fused cost).
    """

    embedding_weight: float
    relative_eps: float
    metric_strength: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.embedding_weight) and 0.0 <= self.embedding_weight <= 1.0):
            raise ValueError(f"embedding_weight must be in [0, 1], got {self.embedding_weight!r}")
        if not (math.isfinite(self.relative_eps) and self.relative_eps > 0):
            raise ValueError(f"relative_eps must be positive, got {self.relative_eps!r}")
        if not (math.isfinite(self.metric_strength) and self.metric_strength >= 0):
            raise ValueError(f"metric_strength must be >= 0, got {self.metric_strength!r}")

    @property
    def learned(self) -> bool:
        """Whether the setting learns a metric from the target set."""
        return self.metric_strength > 0

    @property
    def label(self) -> str:
        """Short readable name, e.g. ``w0.3-rel0.05`` or ``w0.5-rel0.05-metric0.03`` (learned)."""
        base = f"w{self.embedding_weight:g}-rel{self.relative_eps:g}"
        return f"{base}-metric{self.metric_strength:g}" if self.learned else base


#: The fixed settings of the grid, in tie-break order (docs/evaluation.md, "Validated cost").
FIXED_GRID: tuple[Setting, ...] = tuple(
    Setting(w, c) for c in (0.05, 0.1) for w in (0.5, 0.3, 0.7, 0.1, 1.0, 0.0)
)
#: Settings with a metric learned from the target set (docs/evaluation.md, "Learned metric").
LEARNED_SETTINGS: tuple[Setting, ...] = tuple(Setting(0.5, 0.05, c) for c in (0.03, 0.01))
#: The grid searched by default: the fixed settings and the learned ones (docs/evaluation.md, "Learned cost";
#: the server's ``validation_learned_metric`` setting turns the learned ones off).
DEFAULT_GRID: tuple[Setting, ...] = FIXED_GRID + LEARNED_SETTINGS
#: The grid's default: kept unless the best setting beats it by ``ValidationConfig.margin`` standard
#: errors, and used when the target set is too small to validate (docs/evaluation.md).
FALLBACK = Setting(0.5, 0.05)
