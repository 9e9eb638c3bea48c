"""Evaluation tasks on a labelled corpus: target set, held-out texts and a pool, from one label.

A task for label ``L`` draws, with a seed fixed per (seed, label):

- the target set: ``target_size`` texts of ``L`` (what a selector is given);
- the held-out set: ``heldout_size`` other texts of ``L`` (what the metrics score against);
- the pool: ``pool_size`` texts, of which ``round(pool_fraction * pool_size)`` (or as many as remain)
  are the remaining texts of ``L`` and the rest are drawn uniformly from the other labels, shuffled.

The three sets are disjoint. Selectors receive a :class:`SelectionInput` (texts and vectors only);
labels stay in the :class:`Task` for the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

__all__ = ["SelectionInput", "Task", "TaskSpec", "build_task", "choose_topics", "selection_input"]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """How tasks are drawn.

    Attributes
    ----------
    pool_size : int
        Pool texts per task.
    target_size : int
        Target texts given to the selectors.
    heldout_size : int
        Held-out texts of the label, scored by the metrics.
    pool_fraction : float
        Wanted share of the label in the pool, in (0, 0.5): the label is a minority. Capped by the
        texts of the label left after target and held-out.
    seed : int
        Base seed; each label's task uses ``(seed, xxh3_64(label))``.
    """

    pool_size: int = 3000
    target_size: int = 100
    heldout_size: int = 50
    pool_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.pool_size, self.target_size, self.heldout_size) < 1:
            raise ValueError("pool_size, target_size and heldout_size must be >= 1")
        if not 0 < self.pool_fraction < 0.5:
            raise ValueError(f"pool_fraction must be in (0, 0.5), got {self.pool_fraction}")


@dataclass(frozen=True, slots=True)
class Task:
    """One evaluation task: corpus rows of each set, and the pool's label indicator.

    Attributes
    ----------
    label : str
        The target label.
    target, heldout, pool : numpy.ndarray of int64
        Corpus rows; ``pool`` in the (shuffled) order the selectors see.
    pool_is_target : numpy.ndarray of bool, shape (len(pool),)
        Whether each pool row has the target label (metrics only).
    pool_source : numpy.ndarray of int64 or None
        Near-copy stress (:mod:`gotd.lab.evaluation.stress`): the original corpus row of each pool
        row (metrics only); None for a clean pool (every row its own).
    clean_size : int or None
        Near-copy stress: the pool size before copies were added (``k`` is a share of it).
    """

    label: str
    target: np.ndarray
    heldout: np.ndarray
    pool: np.ndarray
    pool_is_target: np.ndarray
    pool_source: np.ndarray | None = None
    clean_size: int | None = None

    @property
    def sources(self) -> np.ndarray:
        """The original corpus row of each pool row (the pool itself when clean)."""
        return self.pool if self.pool_source is None else self.pool_source

    @property
    def positives(self) -> int:
        """Texts of the label in the pool."""
        return int(self.pool_is_target.sum())

    def ceiling(self, k: int) -> float:
        """Best precision any selector can reach with ``k`` picks: ``min(1, positives / k)``."""
        return min(1.0, self.positives / k) if k > 0 else float("nan")


@dataclass(frozen=True, slots=True)
class SelectionInput:
    """Everything a selector may see: texts and embeddings of the pool and of the target set.

    Attributes
    ----------
    pool_texts : tuple of str
    pool_vectors : numpy.ndarray, shape (n, d), float32 unit rows
    target_texts : tuple of str
    target_vectors : numpy.ndarray, shape (m, d), float32 unit rows
    seed : int
        For selectors that draw random numbers.
    """

    pool_texts: tuple[str, ...]
    pool_vectors: np.ndarray
    target_texts: tuple[str, ...]
    target_vectors: np.ndarray
    seed: int


def task_seed(seed: int, label: str) -> list[int]:
    """Seed sequence of ``label``'s task: ``[seed, xxh3_64(label)]`` (stable across runs and Pythons)."""
    return [seed, xxhash.xxh3_64_intdigest(label.encode("utf-8"))]


def build_task(labels: Sequence[str], label: str, spec: TaskSpec) -> Task:
    """Draw the task of ``label`` from a corpus with per-row ``labels``.

    Raises
    ------
    ValueError
        When the label has no text left for the pool after target and held-out, or the corpus has
        too few other texts to fill the pool.
    """
    rng = np.random.default_rng(task_seed(spec.seed, label))
    lab = np.asarray(labels, dtype=object)
    own = np.flatnonzero(lab == label)
    other = np.flatnonzero(lab != label)
    own = own[rng.permutation(own.size)]
    need = spec.target_size + spec.heldout_size
    if own.size <= need:
        raise ValueError(f"label {label!r} has {own.size} texts, need more than {need} (target + held-out)")
    target = np.sort(own[: spec.target_size])
    heldout = np.sort(own[spec.target_size : need])
    n_pos = min(round(spec.pool_fraction * spec.pool_size), own.size - need)
    n_neg = spec.pool_size - n_pos
    if n_pos < 1 or n_neg > other.size:
        raise ValueError(f"cannot fill a pool of {spec.pool_size} for label {label!r}")
    positives = own[need : need + n_pos]
    negatives = rng.choice(other, size=n_neg, replace=False)
    pool = np.concatenate([positives, negatives])
    order = rng.permutation(pool.size)
    pool = pool[order].astype(np.int64)
    is_target = np.zeros(pool.size, dtype=bool)
    is_target[np.flatnonzero(order < n_pos)] = True
    return Task(label, target.astype(np.int64), heldout.astype(np.int64), pool, is_target)


def selection_input(task: Task, texts: Sequence[str], vectors: np.ndarray, *, seed: int) -> SelectionInput:
    """The label-free view of ``task`` that selectors get (pool and target, texts and vectors)."""
    return SelectionInput(
        pool_texts=tuple(texts[i] for i in task.pool),
        pool_vectors=np.ascontiguousarray(vectors[task.pool], dtype=np.float32),
        target_texts=tuple(texts[i] for i in task.target),
        target_vectors=np.ascontiguousarray(vectors[task.target], dtype=np.float32),
        seed=seed,
    )


def choose_topics(
    labels: Sequence[str], topics: list[str] | None, quick: bool, quick_topics: Sequence[str]
) -> list[str]:
    """The labels to build tasks for: ``topics`` (checked), else all; the first two (preferably
    ``quick_topics``) when ``quick``."""
    known = sorted(set(labels))
    if topics is not None:
        unknown = [t for t in topics if t not in known]
        if unknown or not topics:
            raise ValueError(f"unknown topics {unknown}; the corpus has {known}")
        return list(topics)[:2] if quick else list(topics)
    if quick:
        preferred = [t for t in quick_topics if t in known]
        return preferred if len(preferred) == 2 else known[:2]
    return known
