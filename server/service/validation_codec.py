"""A cost validation as a dual-cache entry: its scores, choice and learned metric, checked when read back.

The entry is a :class:`~gotd.cache.duals.codec.PotentialEntry` (the duals' codec: checksummed, versioned)
holding the scores of every setting as float32 values (recall, MRR, AUC per setting), the chosen
setting's index and the grid in the metadata, and the learned metric's factors when a learned setting
was chosen, so a reader refits nothing. An entry of another grid, with non-finite scores or a learned
choice without its metric is refused (the caller validates again).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gotd.cache.duals.codec import PotentialEntry
from gotd.server.selection.metric import LearnedMetric
from gotd.server.selection.validation import Setting, SettingScore, Validation

__all__ = ["decode_validation", "encode_validation"]

_FIELDS = ("recall", "mrr", "auc")


def encode_validation(result: Validation, grid: Sequence[Setting], version: int) -> PotentialEntry:
    """``result`` (validated with ``grid`` at pool version ``version``) as a cache entry."""
    values = [getattr(s, name) for s in result.scores for name in _FIELDS]
    chosen = [s.setting for s in result.scores].index(result.chosen)
    metric = result.metric
    meta = {
        "kind": "cost_validation",
        "grid": [list(_triple(s)) for s in grid],
        "metric_dim": 0 if metric is None else int(metric.embedding.shape[0]),
        "chosen": chosen,
        "fraction": result.fraction,
        "held_out": result.held_out,
        "pool_sample": result.pool_sample,
        "kept_default": result.kept_default,
        "pool_version": version,
    }
    factors = None if metric is None else metric.factors  # the learned metric, stored: no refit
    return PotentialEntry(np.asarray(values, dtype=np.float32), None, meta, factors)


def decode_validation(entry: PotentialEntry, grid: Sequence[Setting]) -> Validation:
    """A cached validation, checked against this server's grid (anything else raises ValueError,
    KeyError or TypeError)."""
    meta = entry.meta
    if meta["kind"] != "cost_validation" or [tuple(map(float, s)) for s in meta["grid"]] != [
        _triple(s) for s in grid
    ]:
        raise ValueError("another grid")
    values = np.asarray(entry.g, dtype=np.float64).reshape(len(grid), len(_FIELDS))
    if not np.isfinite(values).all():
        raise ValueError("non-finite scores")
    scores = tuple(
        SettingScore(setting, *(float(v) for v in row)) for setting, row in zip(grid, values, strict=True)
    )
    chosen = grid[int(meta["chosen"])]
    metric = None
    if chosen.learned:
        if entry.f is None:
            raise ValueError("a learned setting without its metric")
        metric = LearnedMetric.split(entry.f, int(meta["metric_dim"]))
    return Validation(
        chosen,
        scores,
        float(meta["fraction"]),
        int(meta["held_out"]),
        int(meta["pool_sample"]),
        kept_default=bool(meta.get("kept_default", False)),
        metric=metric,
    )


def _triple(s: Setting) -> tuple[float, float, float]:
    return (s.embedding_weight, s.relative_eps, s.metric_strength)
