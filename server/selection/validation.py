"""Per-request validated cost: choose the fused cost's weight and epsilon on the target set itself.

A good selection ranks texts like the target set's own members near the top. Split the targets into
folds; for every setting of a small grid (embedding weight ``w`` of the fused cost, from pure n-gram
``w = 0`` to pure embedding ``w = 1``, and epsilon relative to that cost's scale), solve between a
bounded sample of the pool plus one fold's members (held out) and the other folds (the targets), rank
by the one ranking rule of :mod:`gotd.server.selection.modes`, and score the setting by how many held-
out members land where a selection of the requested size would take them: the held-out *recall at the
requested fraction* ``q`` (a member counts when fewer than ``q`` times the sample size of pool rows
rank ahead of it). The setting with the best recall is used for the real selection when it beats the
fixed default by more than one standard error of the paired gain (the one-standard-error rule of [3]_):
with few targets the recall of a dozen held-out members is noise, and chasing it costs precision
(docs/evaluation.md, "Validated cost"); otherwise the default is kept.

The criterion looks only at the top of the ranking on purpose: a whole-ranking criterion (AUC, or the
mean reciprocal rank to a lesser degree) rewards settings that place every member fairly high, which
on source- or style-defined targets is the smooth embedding cost, while the selection only ever keeps
the top ``q`` — where sharp n-gram matches win (docs/evaluation.md, "Validated cost"). Both are
reported next to the recall for every setting.

Everything is deterministic: folds from a seed the caller derives from the target set's content, the
pool sample is the rows with the smallest id hashes (independent of row order), ties in the recall go
to the higher mean reciprocal rank, then to the earlier setting of the grid. Imports torch and numpy
only; the pool's rows are never all touched (the sample is bounded), so the cost does not grow with
the pool.

References
----------
.. [1] F. Kang et al., "Get more for less: Principled Data Selection for Warming Up Fine-Tuning in
   LLMs", ICLR 2024.
.. [2] S. M. Xie et al., "Data Selection for Language Models via Importance Resampling", NeurIPS 2023.
.. [3] T. Hastie, R. Tibshirani, J. Friedman, "The Elements of Statistical Learning", 2nd ed., 2009,
   section 7.10 (the one-standard-error rule).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from gotd.server.ot.dense import sinkhorn_dense
from gotd.server.selection.config import summary_rows

__all__ = [
    "DEFAULT_GRID",
    "FALLBACK",
    "Setting",
    "SettingScore",
    "Validation",
    "ValidationConfig",
    "validate",
]


@dataclass(frozen=True, slots=True, order=True)
class Setting:
    """One point of the grid: embedding weight ``w`` of the fused cost and epsilon relative to its scale.

    Attributes
    ----------
    embedding_weight : float
        ``w`` in [0, 1]: 0 is the pure n-gram (sketch) cost, 1 the pure embedding cost.
    relative_eps : float
        Epsilon as this multiple of the median pool-target cost of that fused cost.
    """

    embedding_weight: float
    relative_eps: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.embedding_weight) and 0.0 <= self.embedding_weight <= 1.0):
            raise ValueError(f"embedding_weight must be in [0, 1], got {self.embedding_weight!r}")
        if not (math.isfinite(self.relative_eps) and self.relative_eps > 0):
            raise ValueError(f"relative_eps must be positive, got {self.relative_eps!r}")

    @property
    def label(self) -> str:
        """Short readable name, e.g. ``w0.3-rel0.05``."""
        return f"w{self.embedding_weight:g}-rel{self.relative_eps:g}"


#: The grid searched by default, in tie-break order (docs/evaluation.md, "Validated cost").
DEFAULT_GRID: tuple[Setting, ...] = tuple(
    Setting(w, c) for c in (0.05, 0.1) for w in (0.5, 0.3, 0.7, 0.1, 1.0, 0.0)
)
#: The grid's default: kept unless the best setting beats it by ``ValidationConfig.margin`` standard
#: errors, and used when the target set is too small to validate (docs/evaluation.md).
FALLBACK = Setting(0.5, 0.05)


@dataclass(frozen=True, slots=True)
class ValidationConfig:
    """Sizes of a validation (validated on construction).

    Attributes
    ----------
    grid : tuple of Setting
        Settings tried, in tie-break order.
    folds : int
        Folds of the target set; every fold is held out once.
    pool_sample : int
        Pool rows (smallest id hashes) ranked with the held-out members.
    max_train : int
        Targets of the other folds used as the target set (evenly spaced when there are more).
    max_held_out : int
        Held-out members per fold at most.
    min_targets : int
        Fewer targets than this: no validation, :data:`FALLBACK` is used.
    tol, max_iter : float, int
        Sinkhorn settings of the validation solves.
    margin : float
        The best setting replaces :data:`FALLBACK` only when the held-out recall it gains, paired
        member by member, exceeds this many standard errors of that gain (the one-standard-error
        rule); 0 always takes the best setting (recall, then mean reciprocal rank).
    threads : int
        Folds solved at once (numpy releases the GIL in its reductions; 1 solves them in turn).
        The result does not depend on it.
    """

    grid: tuple[Setting, ...] = DEFAULT_GRID
    folds: int = 3
    pool_sample: int = 1024
    max_train: int = 256
    max_held_out: int = 64
    min_targets: int = 100
    tol: float = 1e-3
    max_iter: int = 300
    threads: int = 2
    margin: float = 1.0

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError("grid must not be empty")
        if len(set(self.grid)) != len(self.grid):
            raise ValueError("grid settings must be distinct")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds!r}")
        for name in ("pool_sample", "max_train", "max_held_out"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be >= 0, got {self.margin!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads!r}")
        if self.min_targets < self.folds:
            raise ValueError(f"min_targets must be >= folds ({self.folds}), got {self.min_targets!r}")


@dataclass(frozen=True, slots=True)
class SettingScore:
    """Validation scores of one setting, pooled over every held-out member of every fold.

    Attributes
    ----------
    setting : Setting
    recall : float
        Share of held-out members that fewer than ``fraction x sample`` pool rows rank ahead of
        (the criterion).
    mrr : float
        Mean of ``1 / (1 + rows ahead)``.
    auc : float
        Mean share of pool rows ranked behind a held-out member (ties count half).
    """

    setting: Setting
    recall: float
    mrr: float
    auc: float


@dataclass(frozen=True, slots=True)
class Validation:
    """The outcome of a validation.

    Attributes
    ----------
    chosen : Setting
        The setting to select with.
    scores : tuple of SettingScore
        Every setting tried, in grid order (empty for a fallback).
    fraction : float
        Fraction of the pool the recall was measured at.
    held_out : int
        Held-out members scored (over all folds).
    pool_sample : int
        Pool rows ranked with them.
    fallback : bool
        Too few targets: ``chosen`` is :data:`FALLBACK`, nothing was validated.
    kept_default : bool
        The best setting did not beat :data:`FALLBACK` by the margin: ``chosen`` is the fallback.
    """

    chosen: Setting
    scores: tuple[SettingScore, ...]
    fraction: float
    held_out: int
    pool_sample: int
    fallback: bool = False
    kept_default: bool = False


def validate(
    pool_vectors: np.ndarray,
    pool_tf: np.ndarray,
    pool_keys: np.ndarray,
    idf: np.ndarray,
    target_vectors: np.ndarray,
    target_tf: np.ndarray,
    *,
    seed: int,
    fraction: float,
    config: ValidationConfig | None = None,
) -> Validation:
    """Choose the setting of the grid whose ranking puts the most held-out targets in the top ``fraction``.

    Parameters
    ----------
    pool_vectors : numpy.ndarray, shape (n, d)
        Unit embeddings of the pool (only the sample's rows are read).
    pool_tf : numpy.ndarray, shape (n, buckets)
        The pool's stored sketch rows.
    pool_keys : numpy.ndarray, shape (n,), uint64
        64-bit hashes of the candidate ids: the sample is the rows of the smallest keys.
    idf : numpy.ndarray, shape (buckets,)
        The pool's IDF weights (applied to every sketch, as in the real selection).
    target_vectors : numpy.ndarray, shape (m, d)
        Unit embeddings of the targets.
    target_tf : numpy.ndarray, shape (m, buckets)
        The targets' sketch rows.
    seed : int
        Seeds the folds (the caller derives it from the target set's content hash).
    fraction : float
        Share of the pool the real selection keeps, in (0, 1].
    config : ValidationConfig, optional
        Grid and sizes.

    Returns
    -------
    Validation
    """
    config = config or ValidationConfig()
    n, m = pool_vectors.shape[0], target_vectors.shape[0]
    if pool_tf.shape[0] != n or np.asarray(pool_keys).shape != (n,) or target_tf.shape[0] != m:
        raise ValueError("pool vectors, sketches and keys, and target vectors and sketches, must align")
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if m < config.min_targets or n < 1:
        return Validation(FALLBACK, (), fraction, 0, 0, fallback=True)
    sample = summary_rows(np.asarray(pool_keys, dtype=np.uint64), config.pool_sample)
    folds = _folds(m, config.folds, seed)
    tasks = [
        _FoldTask(
            np.concatenate([pool_vectors[sample], target_vectors[held]]),
            np.concatenate([pool_tf[sample], target_tf[held]]),
            target_vectors[train],
            target_tf[train],
        )
        for held, train in (_split(folds, k, config) for k in range(config.folds))
    ]
    solve = partial(_rank_fold, idf=idf, sample=len(sample), config=config)
    if config.threads > 1 and len(tasks) > 1:  # numpy's reductions release the GIL: folds overlap
        with ThreadPoolExecutor(min(config.threads, len(tasks)), thread_name_prefix="gotd-validate") as pool:
            per_fold = list(pool.map(solve, tasks))
    else:
        per_fold = [solve(task) for task in tasks]
    ahead = {s: np.concatenate([fold[i] for fold in per_fold]) for i, s in enumerate(config.grid)}
    budget = max(1.0, fraction * len(sample))
    scores = tuple(_score(setting, ahead[setting], budget, len(sample)) for setting in config.grid)
    best = max(range(len(scores)), key=lambda i: (scores[i].recall, scores[i].mrr, -i))
    held_total = sum(min(len(f), config.max_held_out) for f in folds)
    chosen = scores[best].setting
    gain = _paired_gain(ahead, chosen, budget)
    kept = config.margin > 0 and gain is not None and gain[0] <= config.margin * gain[1]
    return Validation(
        FALLBACK if kept else chosen, scores, fraction, held_total, len(sample), kept_default=kept
    )


def _paired_gain(
    ahead: dict[Setting, np.ndarray], best: Setting, budget: float
) -> tuple[float, float] | None:
    """Mean and standard error of the held-out hits ``best`` gains over :data:`FALLBACK`, member by member.

    None when there is nothing to compare (``best`` is the fallback, or the grid lacks it).
    """
    if best == FALLBACK or FALLBACK not in ahead:
        return None
    d = (ahead[best] < budget).astype(np.float64) - (ahead[FALLBACK] < budget).astype(np.float64)
    if len(d) < 2:
        return float(d.mean()), math.inf
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


@dataclass(frozen=True, slots=True)
class _FoldTask:
    """One fold's small problem: pool sample plus held-out members (rows) against the training folds."""

    x_vectors: np.ndarray
    x_tf: np.ndarray
    y_vectors: np.ndarray
    y_tf: np.ndarray


def _split(folds: list[np.ndarray], k: int, config: ValidationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Held-out rows of fold ``k`` and the training rows (the other folds, evenly spaced, bounded)."""
    held = folds[k][: config.max_held_out]
    train = np.sort(np.concatenate([folds[j] for j in range(len(folds)) if j != k]))
    return held, train[_spaced(len(train), config.max_train)]


def _rank_fold(
    task: _FoldTask, *, idf: np.ndarray, sample: int, config: ValidationConfig
) -> list[np.ndarray]:
    """Pool rows ranked ahead of each held-out member, for every setting of the grid (grid order).

    The two halves of the cost are formed once; each weight's median (the scale of its epsilon) once.
    """
    c_emb = _cost(task.x_vectors, task.y_vectors)
    c_sketch = _cost(_unit(task.x_tf, idf), _unit(task.y_tf, idf))
    medians: dict[float, float] = {}
    out = []
    for setting in config.grid:
        w = setting.embedding_weight
        cost = c_emb * np.float32(w) + c_sketch * np.float32(1.0 - w)
        if w not in medians:
            medians[w] = float(np.median(cost[:sample]))
        eps = setting.relative_eps * medians[w]
        solved = sinkhorn_dense(torch.from_numpy(cost), eps=eps, tol=config.tol, max_iter=config.max_iter)
        f = solved.f.double().numpy()
        out.append(_rows_ahead(f[:sample], f[sample:]))
    return out


def _folds(m: int, folds: int, seed: int) -> list[np.ndarray]:
    """Target rows of each fold: a seeded permutation dealt round-robin (each fold's rows in that order)."""
    perm = np.random.default_rng(np.random.SeedSequence(seed & (2**64 - 1))).permutation(m)
    return [perm[k::folds] for k in range(folds)]


def _spaced(size: int, at_most: int) -> np.ndarray:
    """``min(size, at_most)`` evenly spaced positions of ``range(size)``."""
    if size <= at_most:
        return np.arange(size)
    return np.unique(np.linspace(0, size - 1, at_most).round().astype(np.int64))


def _unit(tf: np.ndarray, idf: np.ndarray) -> np.ndarray:
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


def _rows_ahead(pool_scores: np.ndarray, held_scores: np.ndarray) -> np.ndarray:
    """Pool rows ranked ahead of each held-out member (lower score first; ties count half)."""
    ordered = np.sort(pool_scores)
    below = np.searchsorted(ordered, held_scores, side="left")
    upto = np.searchsorted(ordered, held_scores, side="right")
    out: np.ndarray = below + 0.5 * (upto - below)
    return out


def _score(setting: Setting, ahead: np.ndarray, budget: float, sample: int) -> SettingScore:
    return SettingScore(
        setting=setting,
        recall=float(np.mean(ahead < budget)),
        mrr=float(np.mean(1.0 / (1.0 + ahead))),
        auc=float(1.0 - np.mean(ahead) / sample),
    )
