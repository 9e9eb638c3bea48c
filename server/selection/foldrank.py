"""One fold of the validated cost: rank a pool sample and the held-out targets under every setting.

The numerics of :func:`gotd.server.selection.validation.validate`, kept apart: the costs of the small
problem (pool sample plus held-out members against the training folds) formed once per fold and
mixed per setting, the learned metric fitted on the fold's training targets against pool rows that
are not in the ranked sample (:func:`gotd.server.selection.metric.fit_metric`), a dense Sinkhorn per
setting, and the pool rows ranked ahead of each held-out member. numpy and torch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gotd.server.ot.dense import DenseWork, sinkhorn_dense
from gotd.server.selection.grid import Setting
from gotd.server.selection.metric import Discriminant, discriminant

__all__ = ["FoldTask", "Halves", "rank_fold", "rows_ahead", "spaced", "unit_rows"]

Halves = tuple[np.ndarray, np.ndarray]
"""Embeddings and unit sketches of some rows (the fused rows' two halves, unweighted)."""


@dataclass(frozen=True, slots=True)
class FoldTask:
    """One fold's small problem: pool sample plus held-out members (rows) against the training folds.

    Attributes
    ----------
    x, y : Halves
        Rows ranked (the pool sample first) and the training targets.
    negatives : Halves
        Pool rows outside the sample: the learned metric's pool class (may have no rows).
    """

    x: Halves
    y: Halves
    negatives: Halves


def rank_fold(
    task: FoldTask, *, grid: Sequence[Setting], sample: int, tol: float, max_iter: int
) -> list[np.ndarray]:
    """Pool rows ranked ahead of each held-out member, for every setting of ``grid`` (grid order).

    The two halves of the cost are formed once; the learned settings' discriminator is fitted once,
    on this fold's training targets, and adds its column's squared differences; each cost's median
    (the scale of its epsilon) once.
    """
    c_emb, c_sketch = _cost(task.x[0], task.y[0]), _cost(task.x[1], task.y[1])
    fitted: list[Discriminant] = []
    medians: dict[tuple[float, float], float] = {}
    work = DenseWork()  # every buffer of this fold's solves, allocated once (see DenseWork)
    cost, part = work.get("cost", c_emb.shape, c_emb.dtype), work.get("part", c_emb.shape, c_emb.dtype)
    ranked = work.get("ranked", (sample * c_emb.shape[1],), c_emb.dtype)
    out = []
    for setting in grid:
        strength, w = setting.metric_strength, setting.embedding_weight
        np.multiply(c_emb, np.float32(w), out=cost)
        cost += np.multiply(c_sketch, np.float32(1.0 - w), out=part)
        if strength > 0:
            if not fitted:
                fitted.append(discriminant(task.y, task.negatives))
            metric = fitted[0].metric(w, strength)
            np.subtract(metric.project(task.x)[:, None], metric.project(task.y)[None, :], out=part)
            cost += np.square(part, out=part)
        if (w, strength) not in medians:
            np.copyto(ranked, cost[:sample].reshape(-1))
            medians[w, strength] = float(np.median(ranked, overwrite_input=True))
        eps = setting.relative_eps * medians[w, strength]
        solved = sinkhorn_dense(torch.from_numpy(cost), eps=eps, tol=tol, max_iter=max_iter, work=work)
        f = solved.f.double().numpy()
        out.append(rows_ahead(f[:sample], f[sample:]))
    return out


def spaced(size: int, at_most: int) -> np.ndarray:
    """``min(size, at_most)`` evenly spaced positions of ``range(size)``."""
    if size <= at_most:
        return np.arange(size)
    return np.unique(np.linspace(0, size - 1, at_most).round().astype(np.int64))


def unit_rows(tf: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """:func:`gotd.server.selection.sketches.unit_sketches` of a few rows, in numpy (no thread start-up)."""
    rows = tf.astype(np.float32) * idf.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: np.ndarray = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return out


def _cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dense squared Euclidean costs (float32) between small row sets (numpy: no thread start-up)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    b = np.ascontiguousarray(y, dtype=np.float32)
    out: np.ndarray = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    np.maximum(out, 0.0, out=out)
    return out


def rows_ahead(pool_scores: np.ndarray, held_scores: np.ndarray) -> np.ndarray:
    """Pool rows ranked ahead of each held-out member (lower score first; ties count half)."""
    ordered = np.sort(pool_scores)
    below = np.searchsorted(ordered, held_scores, side="left")
    upto = np.searchsorted(ordered, held_scores, side="right")
    out: np.ndarray = below + 0.5 * (upto - below)
    return out
