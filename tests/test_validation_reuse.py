"""The validation's buffers and shortcuts change no bit: its solves, discriminators and rankings against
straightforward references (fresh arrays every step, ``np.var``, ``np.median`` of a copy: the code before
the buffers were kept), so every setting's validation score and the chosen setting stay the same."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from gotd.server.ot.dense import DenseWork, sinkhorn_dense
from gotd.server.selection.config import summary_rows
from gotd.server.selection.foldrank import FoldTask, rank_fold, rank_folds, rows_ahead, unit_rows
from gotd.server.selection.grid import DEFAULT_GRID
from gotd.server.selection.metric import Discriminant, _logistic, discriminant
from gotd.server.selection.validation import ValidationConfig, _folds, _negatives, _split, _with
from tests.test_validation import _task


def _lse(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    e = np.exp(z - top[:, None])
    out: np.ndarray = top + np.log(e.sum(axis=1))
    return out


def _sinkhorn(c: np.ndarray, eps: float, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    rows = np.ascontiguousarray(c / eps)
    cols = np.ascontiguousarray(rows.T)
    log_a, log_b = -math.log(c.shape[0]), -math.log(c.shape[1])
    g = np.zeros(c.shape[1], dtype=c.dtype)
    f = -eps * _lse(g / eps + log_b - rows)
    passes = 0
    while passes < max_iter:
        g = -eps * _lse((f / eps + log_a) - cols)
        f_next = -eps * _lse((g / eps + log_b) - rows)
        passes += 1
        error = float(np.abs(np.expm1((f - f_next).astype(np.float64) / eps)).sum()) / c.shape[0]
        f = f_next
        if error <= tol or not math.isfinite(error):
            break
    return f, g, passes


def _discriminant(
    positives: tuple[np.ndarray, np.ndarray], negatives: tuple[np.ndarray, np.ndarray]
) -> Discriminant:
    x = np.concatenate([np.concatenate(positives, axis=1), np.concatenate(negatives, axis=1)]).astype(
        np.float32
    )
    p, q, d = positives[0].shape[0], negatives[0].shape[0], positives[0].shape[1]
    variance = x.var(axis=0, dtype=np.float64)
    sd = np.sqrt(variance)
    live = sd > 1e-8
    z = np.zeros((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    z[:, :-1][:, live] = (x[:, live] - x[:, live].mean(axis=0, dtype=np.float64)) / sd[live]
    z[:, -1] = 1.0
    t = np.concatenate([np.ones(p), np.zeros(q)]).astype(np.float32)
    s = np.concatenate([np.full(p, 0.5 / p), np.full(q, 0.5 / q)]).astype(np.float32)
    beta = _logistic(z, t, s, 0.05).astype(np.float64)
    direction = np.zeros_like(beta)
    direction[live] = beta[live] / sd[live]
    projected = x[p:].astype(np.float64) @ direction
    return Discriminant(
        direction, d, float(variance[:d].sum()), float(variance[d:].sum()), float(projected.var())
    )


def _cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(out, 0.0)


def _rank_fold(task: FoldTask, sample: int, config: ValidationConfig) -> list[np.ndarray]:
    c_emb, c_sketch = _cost(task.x[0], task.y[0]), _cost(task.x[1], task.y[1])
    fitted = _discriminant(task.y, task.negatives)
    out = []
    for setting in config.grid:
        w = setting.embedding_weight
        cost = c_emb * np.float32(w) + c_sketch * np.float32(1.0 - w)
        if setting.metric_strength > 0:
            metric = fitted.metric(w, setting.metric_strength)
            cost += np.square(metric.project(task.x)[:, None] - metric.project(task.y)[None, :])
        eps = setting.relative_eps * float(np.median(cost[:sample]))
        f = _sinkhorn(cost, eps, config.tol, config.max_iter)[0].astype(np.float64)
        out.append(rows_ahead(f[:sample], f[sample:]))
    return out


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def test_dense_sinkhorn_with_kept_buffers_matches_fresh_arrays() -> None:
    rng = np.random.default_rng(3)
    work = DenseWork()  # reused across costs and shapes, as a fold reuses it across settings
    for shape, eps in (((90, 30), 0.05), ((90, 30), 0.2), ((40, 70), 0.1), ((90, 30), 0.01)):
        cost = rng.random(shape).astype(np.float32)
        f, g, passes = _sinkhorn(cost, eps, 1e-4, 200)
        solved = sinkhorn_dense(torch.from_numpy(cost), eps=eps, tol=1e-4, max_iter=200, work=work)
        _same(solved.f.numpy(), f)
        _same(solved.g.numpy(), g)
        assert solved.n_iter == passes
        alone = sinkhorn_dense(torch.from_numpy(cost), eps=eps, tol=1e-4, max_iter=200)
        _same(alone.f.numpy(), f)


def test_discriminant_matches_np_var_and_the_indexed_standardisation() -> None:
    rng = np.random.default_rng(5)
    pos = (rng.normal(size=(40, 12)).astype(np.float32), rng.random((40, 20)).astype(np.float32))
    neg = (rng.normal(size=(70, 12)).astype(np.float32), rng.random((70, 20)).astype(np.float32))
    constant = (
        (pos[0], np.where(np.arange(20) == 4, np.float32(0.5), pos[1])),
        (
            neg[0],
            np.where(np.arange(20) == 4, np.float32(0.5), neg[1]),
        ),
    )
    for positives, negatives in ((pos, neg), constant):  # every column live; one constant column
        got, ref = discriminant(positives, negatives), _discriminant(positives, negatives)
        _same(got.direction, ref.direction)
        assert (got.spread_embedding, got.spread_sketch, got.projected_variance) == (
            ref.spread_embedding,
            ref.spread_sketch,
            ref.projected_variance,
        )
    assert not discriminant(pos, (neg[0][:0], neg[1][:0])).direction.any()


def test_every_fold_ranks_as_the_fresh_array_reference() -> None:
    for kind in ("ngram", "embedding"):
        task = _task(kind)
        config = ValidationConfig(min_targets=30, pool_sample=300, fit_sample=150)
        keys, idf = task["pool_keys"], task["idf"]
        sample = summary_rows(keys, config.pool_sample)
        negatives = _negatives(task["pool_vectors"], task["pool_tf"], keys, sample, idf, config)
        target_unit = unit_rows(task["target_tf"], idf)
        x_pool = (task["pool_vectors"][sample], unit_rows(task["pool_tf"][sample], idf))
        folds = _folds(task["target_vectors"].shape[0], config.folds, 7)
        fold_tasks = []
        for k in range(config.folds):
            held, train = _split(folds, k, config)
            vectors = task["target_vectors"]
            fold = FoldTask(
                _with(x_pool, (vectors[held], target_unit[held])),
                (vectors[train], target_unit[train]),
                negatives,
            )
            fold_tasks.append(fold)
            got = rank_fold(
                fold, grid=DEFAULT_GRID, sample=len(sample), tol=config.tol, max_iter=config.max_iter
            )
            for a, b in zip(got, _rank_fold(fold, len(sample), config), strict=True):
                _same(a, b)

        options: dict[str, Any] = {"grid": DEFAULT_GRID, "sample": len(sample), "tol": config.tol}
        alone = rank_folds(fold_tasks, **options, max_iter=config.max_iter, threads=1)
        dealt = rank_folds(fold_tasks, **options, max_iter=config.max_iter, threads=2)  # groups on threads
        for one, two in zip(alone, dealt, strict=True):
            for a, b in zip(one, two, strict=True):
                _same(a, b)
