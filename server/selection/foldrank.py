"""One fold of the validated cost: rank a pool sample and the held-out targets under every setting.

The numerics of :func:`gotd.server.selection.validation.validate`, kept apart: the costs of the small
problem (pool sample plus held-out members against the training folds) formed once per fold and
mixed per setting, the learned metric fitted on the fold's training targets against pool rows that
are not in the ranked sample (:func:`gotd.server.selection.metric.fit_metric`), a dense Sinkhorn per
setting, and the pool rows ranked ahead of each held-out member. numpy and torch only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from gotd.server.ot.dense import DenseWork, sinkhorn_dense
from gotd.server.selection.grid import Setting
from gotd.server.selection.metric import Discriminant, discriminant

__all__ = [
    "FoldCosts",
    "FoldTask",
    "Halves",
    "cost_groups",
    "fold_costs",
    "rank_fold",
    "rank_folds",
    "rank_group",
    "rows_ahead",
    "spaced",
    "unit_rows",
]

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


@dataclass(frozen=True, slots=True)
class FoldCosts:
    """What every setting of one fold shares: the two halves of the cost and the discriminator.

    Attributes
    ----------
    task : FoldTask
    embedding, sketch : numpy.ndarray, shape (x rows, y rows), float32
        Squared Euclidean costs of each half, unweighted.
    fitted : Discriminant or None
        Fitted on the fold's training targets against ``task.negatives`` (None: no learned setting).
    """

    task: FoldTask
    embedding: np.ndarray
    sketch: np.ndarray
    fitted: Discriminant | None


def fold_costs(task: FoldTask, grid: Sequence[Setting]) -> FoldCosts:
    """The costs every setting of ``grid`` mixes in the fold ``task`` (formed once)."""
    learned = any(setting.metric_strength > 0 for setting in grid)
    fitted = discriminant(task.y, task.negatives) if learned else None
    return FoldCosts(task, _cost(task.x[0], task.y[0]), _cost(task.x[1], task.y[1]), fitted)


def cost_groups(grid: Sequence[Setting]) -> list[list[int]]:
    """Positions in ``grid`` of the settings sharing one cost (weight and strength; epsilon apart), in
    the order of their first setting: one mixed cost and one median per group."""
    groups: dict[tuple[float, float], list[int]] = {}
    for i, setting in enumerate(grid):
        groups.setdefault((setting.embedding_weight, setting.metric_strength), []).append(i)
    return list(groups.values())


def rank_group(
    costs: FoldCosts, settings: Sequence[Setting], *, sample: int, tol: float, max_iter: int, work: DenseWork
) -> list[np.ndarray]:
    """Pool rows ranked ahead of each held-out member under ``settings`` (one group of
    :func:`cost_groups`): their cost mixed once, its median (the scale of epsilon) once, a solve each.
    ``work`` holds the buffers (one per thread; the result does not depend on it)."""
    task, c_emb, c_sketch = costs.task, costs.embedding, costs.sketch
    w, strength = settings[0].embedding_weight, settings[0].metric_strength
    cost, part = work.get("cost", c_emb.shape, c_emb.dtype), work.get("part", c_emb.shape, c_emb.dtype)
    np.multiply(c_emb, np.float32(w), out=cost)
    cost += np.multiply(c_sketch, np.float32(1.0 - w), out=part)
    if strength > 0:
        assert costs.fitted is not None, "a learned setting needs the fold's discriminator"
        metric = costs.fitted.metric(w, strength)
        np.subtract(metric.project(task.x)[:, None], metric.project(task.y)[None, :], out=part)
        cost += np.square(part, out=part)
    ranked = work.get("ranked", (sample * c_emb.shape[1],), c_emb.dtype)
    np.copyto(ranked, cost[:sample].reshape(-1))
    median = float(np.median(ranked, overwrite_input=True))
    out = []
    for setting in settings:
        eps = setting.relative_eps * median
        solved = sinkhorn_dense(torch.from_numpy(cost), eps=eps, tol=tol, max_iter=max_iter, work=work)
        f = solved.f.double().numpy()
        out.append(rows_ahead(f[:sample], f[sample:]))
    return out


def rank_fold(
    task: FoldTask, *, grid: Sequence[Setting], sample: int, tol: float, max_iter: int
) -> list[np.ndarray]:
    """Pool rows ranked ahead of each held-out member, for every setting of ``grid`` (grid order): the
    fold's costs (:func:`fold_costs`), then each group of settings sharing a cost (:func:`rank_group`)."""
    return rank_folds([task], grid=grid, sample=sample, tol=tol, max_iter=max_iter, threads=1)[0]


def rank_folds(
    tasks: Sequence[FoldTask],
    *,
    grid: Sequence[Setting],
    sample: int,
    tol: float,
    max_iter: int,
    threads: int,
) -> list[list[np.ndarray]]:
    """:func:`rank_fold` of every task, on ``threads`` threads (numpy's reductions release the GIL).

    The work is dealt finer than by fold (three folds on two threads left one idle a third of the
    time): each fold's costs, then every fold's groups of settings sharing a cost, the learned ones
    (the slowest) first. Each thread keeps its own buffers; the results do not depend on ``threads``,
    bit for bit.
    """
    groups = sorted(cost_groups(grid), key=lambda g: -grid[g[0]].metric_strength)
    jobs = [(k, group) for group in groups for k in range(len(tasks))]
    local = threading.local()

    def costs_of(task: FoldTask) -> FoldCosts:
        return fold_costs(task, grid)

    def solve(job: tuple[int, list[int]]) -> list[np.ndarray]:
        work = getattr(local, "work", None)
        if work is None:
            work = local.work = DenseWork()
        settings = [grid[i] for i in job[1]]
        return rank_group(costs[job[0]], settings, sample=sample, tol=tol, max_iter=max_iter, work=work)

    if threads < 2 or len(tasks) < 2:
        costs = [costs_of(task) for task in tasks]
        ranked = [solve(job) for job in jobs]
    else:
        with ThreadPoolExecutor(min(threads, len(jobs)), thread_name_prefix="gotd-validate") as pool:
            costs = list(pool.map(costs_of, tasks))
            ranked = list(pool.map(solve, jobs))
    out: list[list[np.ndarray]] = [[np.zeros(0)] * len(grid) for _ in tasks]
    for (k, group), results in zip(jobs, ranked, strict=True):
        for i, ahead in zip(group, results, strict=True):
            out[k][i] = ahead
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
