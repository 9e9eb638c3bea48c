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

A setting may also learn a metric of the fused features from the target set, the fused cost stretched
along a target-vs-pool discriminant direction (:mod:`gotd.server.selection.metric`, ``metric_strength >
0``; in the grid when the server enables it). It competes like any other: in each fold the metric is
fitted on that fold's training targets only, against pool rows *outside* the ranked sample (the next
``fit_sample`` smallest id hashes), so the held-out recall is measured on members and pool rows the
discriminator never saw. When the validation chooses it, the metric is refitted on the whole (bounded)
target set against the same pool rows and returned with the choice (:attr:`Validation.metric`).

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
from dataclasses import dataclass

import numpy as np

from gotd.server.selection.blas import single_threaded_blas
from gotd.server.selection.config import summary_rows
from gotd.server.selection.foldrank import FoldTask, Halves, rank_folds, spaced, unit_rows
from gotd.server.selection.grid import DEFAULT_GRID, FALLBACK, FIXED_GRID, LEARNED_SETTINGS, Setting
from gotd.server.selection.metric import LearnedMetric, fit_metric

__all__ = [
    "DEFAULT_GRID",
    "FALLBACK",
    "FIXED_GRID",
    "LEARNED_SETTINGS",
    "Setting",
    "SettingScore",
    "Validation",
    "ValidationConfig",
    "fit_rows",
    "learned_metric",
    "validate",
]


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
    fit_sample : int
        Pool rows (the next smallest id hashes after the ranked sample) that a learned metric is
        fitted against (settings with ``metric_strength > 0`` only; none are read otherwise).
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
    fit_sample: int = 1024
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
        for name in ("pool_sample", "max_train", "max_held_out", "fit_sample"):
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
    metric : LearnedMetric or None
        ``chosen`` learns a metric: the one fitted on the whole target set, to select with.
    """

    chosen: Setting
    scores: tuple[SettingScore, ...]
    fraction: float
    held_out: int
    pool_sample: int
    fallback: bool = False
    kept_default: bool = False
    metric: LearnedMetric | None = None


@single_threaded_blas()  # small products: BLAS threads only wait for each other
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
    keys = np.asarray(pool_keys, dtype=np.uint64)
    sample = summary_rows(keys, config.pool_sample)
    learned = any(s.learned for s in config.grid)
    negatives = _negatives(pool_vectors, pool_tf, keys, sample, idf, config if learned else None)
    folds = _folds(m, config.folds, seed)
    target_unit = unit_rows(target_tf, idf)
    x_pool: Halves = (pool_vectors[sample], unit_rows(pool_tf[sample], idf))
    tasks = [
        FoldTask(
            _with(x_pool, (target_vectors[held], target_unit[held])),
            (target_vectors[train], target_unit[train]),
            negatives,
        )
        for held, train in (_split(folds, k, config) for k in range(config.folds))
    ]
    per_fold = rank_folds(
        tasks,
        grid=config.grid,
        sample=len(sample),
        tol=config.tol,
        max_iter=config.max_iter,
        threads=config.threads,
    )
    ahead = {s: np.concatenate([fold[i] for fold in per_fold]) for i, s in enumerate(config.grid)}
    budget = max(1.0, fraction * len(sample))
    scores = tuple(_score(setting, ahead[setting], budget, len(sample)) for setting in config.grid)
    best = max(range(len(scores)), key=lambda i: (scores[i].recall, scores[i].mrr, -i))
    held_total = sum(min(len(f), config.max_held_out) for f in folds)
    chosen = scores[best].setting
    gain = _paired_gain(ahead, chosen, budget)
    kept = config.margin > 0 and gain is not None and gain[0] <= config.margin * gain[1]
    chosen = FALLBACK if kept else chosen
    metric = _refit((target_vectors, target_unit), negatives, chosen, config) if chosen.learned else None
    return Validation(chosen, scores, fraction, held_total, len(sample), kept_default=kept, metric=metric)


def learned_metric(
    pool_vectors: np.ndarray,
    pool_tf: np.ndarray,
    pool_keys: np.ndarray,
    idf: np.ndarray,
    target_vectors: np.ndarray,
    target_tf: np.ndarray,
    setting: Setting,
    config: ValidationConfig | None = None,
) -> LearnedMetric:
    """The metric :func:`validate` selects with when it chooses the learned ``setting`` (same inputs as
    :func:`validate`): fitted on the whole (bounded) target set against the same pool rows."""
    positives, negatives = fit_rows(
        pool_vectors, pool_tf, pool_keys, idf, target_vectors, target_tf, config or ValidationConfig()
    )
    with single_threaded_blas():
        return fit_metric(
            positives, negatives, weight=setting.embedding_weight, strength=setting.metric_strength
        )


def fit_rows(
    pool_vectors: np.ndarray,
    pool_tf: np.ndarray,
    pool_keys: np.ndarray,
    idf: np.ndarray,
    target_vectors: np.ndarray,
    target_tf: np.ndarray,
    config: ValidationConfig,
) -> tuple[Halves, Halves]:
    """The rows a learned metric is refitted on for the selection: the targets (evenly spaced, at most
    ``max_train``) and the pool rows after the ranked sample (:func:`_negatives`)."""
    keys = np.asarray(pool_keys, dtype=np.uint64)
    sample = summary_rows(keys, config.pool_sample)
    negatives = _negatives(pool_vectors, pool_tf, keys, sample, idf, config)
    every = spaced(target_vectors.shape[0], config.max_train)
    return (target_vectors[every], unit_rows(target_tf[every], idf)), negatives


def _refit(targets: Halves, negatives: Halves, setting: Setting, config: ValidationConfig) -> LearnedMetric:
    every = spaced(targets[0].shape[0], config.max_train)
    positives = (targets[0][every], targets[1][every])
    return fit_metric(positives, negatives, weight=setting.embedding_weight, strength=setting.metric_strength)


def _with(a: Halves, b: Halves) -> Halves:
    """The rows of ``a`` then those of ``b``."""
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])


def _negatives(
    vectors: np.ndarray,
    tf: np.ndarray,
    keys: np.ndarray,
    sample: np.ndarray,
    idf: np.ndarray,
    config: ValidationConfig | None,
) -> Halves:
    """The learned metric's pool rows: the ``fit_sample`` smallest id hashes after the ranked sample
    (never ranked, so the held-out recall is not measured on rows the metric was fitted to push away).
    No rows without learned settings (``config`` None), or when the pool is all in the sample."""
    if config is None:
        rows = np.zeros(0, dtype=np.int64)
    else:
        wider = summary_rows(keys, len(sample) + config.fit_sample)
        rows = np.setdiff1d(wider, sample, assume_unique=True)
    return vectors[rows], unit_rows(tf[rows], idf)


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


def _split(folds: list[np.ndarray], k: int, config: ValidationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Held-out rows of fold ``k`` and the training rows (the other folds, evenly spaced, bounded)."""
    held = folds[k][: config.max_held_out]
    train = np.sort(np.concatenate([folds[j] for j in range(len(folds)) if j != k]))
    return held, train[spaced(len(train), config.max_train)]


def _folds(m: int, folds: int, seed: int) -> list[np.ndarray]:
    """Target rows of each fold: a seeded permutation dealt round-robin (each fold's rows in that order)."""
    perm = np.random.default_rng(np.random.SeedSequence(seed & (2**64 - 1))).permutation(m)
    return [perm[k::folds] for k in range(folds)]


def _score(setting: Setting, ahead: np.ndarray, budget: float, sample: int) -> SettingScore:
    return SettingScore(
        setting=setting,
        recall=float(np.mean(ahead < budget)),
        mrr=float(np.mean(1.0 / (1.0 + ahead))),
        auc=float(1.0 - np.mean(ahead) / sample),
    )
