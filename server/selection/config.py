"""Selection settings and results: :class:`Mode`, :class:`SelectionConfig`, :class:`Potential`.

Also the two pure rules that pick what a solve runs on: :func:`resolve_mode` and :func:`summary_rows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

__all__ = ["RELATIVE_EPS_ROWS", "Mode", "Potential", "SelectionConfig", "resolve_mode", "summary_rows"]

#: Most candidates (smallest id hashes) and targets (evenly spaced) behind a ``relative_eps`` median.
RELATIVE_EPS_ROWS = 1024


class Mode(StrEnum):
    """Selection mode; ``AUTO`` resolves to ``EXACT`` or ``GLOBAL`` by pool size."""

    AUTO = "auto"
    EXACT = "exact"
    GLOBAL = "global"
    PAPER = "paper"


DEFAULT_SUMMARY_SIZE = 8192
"""Rows of the global-mode summary, server and library alike (see :class:`SelectionConfig`)."""


@dataclass(frozen=True, slots=True)
class SelectionConfig:
    """Solver and mode settings of one selection (validated on construction).

    Attributes
    ----------
    mode : Mode
        Selection mode.
    eps : float
        Entropic regularisation on the squared Euclidean cost (paper: 0.1).
    tol : float
        L1 marginal error at which a solve counts as converged. 1e-4: the exact top 5% then equals
        a float64 solve to 1e-9, where the paper's threshold 0.1 keeps only 92% of it, and float32
        reaches it down to eps = 0.01 (docs/benchmarks/ot.md).
    max_iter : int
        Sinkhorn passes at most.
    exact_max_pool : int
        ``auto``: exact up to this many candidates, global above.
    summary_size : int
        ``global``: rows of the hash-chosen subsample. 8192: top-5% overlap with exact >= 0.99 on
        every benchmark pool (4096 only on average), for about 0.15 s more at 1M x 1k
        (docs/benchmarks/ot.md).
    summary_cells : int
        ``global``: cells that post-stratify the subsample (Voronoi cells of its smallest-key
        points; each cell weighted to its exact share of the pool; one GEMM pass of the pool with
        this many columns). 0: plain uniform subsample, whose random cell masses cost about 1% of
        top-5% overlap at 4096 rows (docs/benchmarks/ot.md).
    paper_domains : int
        ``paper``: closest domains kept.
    paper_clusters : int
        ``paper`` without domain labels: k of the k-means that stands in for domains.
    block_size : int or None
        Rows per block of the OT passes (None: a block of cost is about 32 MB).
    seed : int
        Seeds the k-means of ``paper`` mode.
    eps_scaling : bool
        Anneal epsilon on cold solves. Off by default: at eps = 0.1 on unit-norm embeddings it
        costs passes instead of saving them (docs/benchmarks/ot.md, "iterations vs eps").
    relative_eps : float or None
        When set, ``eps`` is ignored and each solve uses this multiple of the median
        candidate-target cost, measured between the :data:`RELATIVE_EPS_ROWS` candidates with the
        smallest id hashes and (at most as many, evenly spaced) targets; the potential records the
        absolute epsilon used.
    project : bool
        Run Sinkhorn on isometric coordinates of the targets' span (``m + 1`` columns) when that is
        at most half the feature dimension: distances to the targets are kept to rounding, every
        pass costs ``(m + 1) / d`` of a pass on the raw features.
    """

    mode: Mode = Mode.AUTO
    eps: float = 0.1
    tol: float = 1e-4
    max_iter: int = 1000
    exact_max_pool: int = 20000
    summary_size: int = DEFAULT_SUMMARY_SIZE
    summary_cells: int = 64
    paper_domains: int = 2
    paper_clusters: int = 16
    block_size: int | None = None
    seed: int = 0
    eps_scaling: bool = False
    relative_eps: float | None = None
    project: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", Mode(self.mode))
        except ValueError:
            raise ValueError(f"mode must be one of {[m.value for m in Mode]}, got {self.mode!r}") from None
        if not (math.isfinite(self.eps) and 1e-38 <= self.eps <= 1e38):
            # float32 kernels scale by 2/eps: outside this range they overflow
            raise ValueError(f"eps must be a positive number in [1e-38, 1e38], got {self.eps!r}")
        if self.relative_eps is not None and not (
            math.isfinite(self.relative_eps) and 1e-6 <= self.relative_eps <= 1e6
        ):
            raise ValueError(f"relative_eps must be a number in [1e-6, 1e6], got {self.relative_eps!r}")
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be a positive finite number, got {self.tol!r}")
        for name in ("max_iter", "summary_size", "paper_domains", "paper_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("exact_max_pool", "summary_cells"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1 or None, got {self.block_size!r}")


@dataclass(frozen=True, slots=True)
class Potential:
    """A target potential and how it was obtained: all a dual cache needs to score without a solve.

    Attributes
    ----------
    g : torch.Tensor, shape (m,)
        Target potential, float32 on the CPU.
    mode : Mode
        Resolved mode (never ``AUTO``).
    eps, n_iter, marginal_error, converged, cost
        Of the solve that produced ``g`` (``paper``: the final solve on the kept domains).
    rows : numpy.ndarray of int64 or None
        ``paper``: sorted pool rows of the kept domains; None when every row is eligible.
    """

    g: torch.Tensor
    mode: Mode
    eps: float
    n_iter: int
    marginal_error: float
    converged: bool
    cost: float
    rows: np.ndarray | None = None


def resolve_mode(mode: Mode, n: int, config: SelectionConfig) -> Mode:
    """``AUTO`` becomes ``EXACT`` for ``n <= config.exact_max_pool`` and ``GLOBAL`` above; others stay."""
    mode = Mode(mode)
    if mode is Mode.AUTO:
        return Mode.EXACT if n <= config.exact_max_pool else Mode.GLOBAL
    return mode


def summary_rows(keys: np.ndarray, size: int) -> np.ndarray:
    """Rows of the ``size`` smallest keys (ties by row), sorted: a subsample independent of row order.

    Parameters
    ----------
    keys : numpy.ndarray, shape (n,), uint64
        64-bit hashes of the candidate ids.
    size : int
        Subsample size (all rows when ``size >= n``).

    Returns
    -------
    numpy.ndarray, shape (min(size, n),), int64
    """
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be 1-D, got shape {keys.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    n = keys.shape[0]
    if size >= n:
        return np.arange(n, dtype=np.int64)
    cut = keys[np.argpartition(keys, size - 1)[:size]].max()
    below = np.flatnonzero(keys < cut)
    at = np.flatnonzero(keys == cut)[: size - len(below)]
    return np.sort(np.concatenate([below, at])).astype(np.int64)
