"""TSDS (Liu, Karbasi, Rekatsinas, NeurIPS 2024) with its KNN-KDE algorithm, as an evaluation method.

TSDS chooses a distribution ``p`` over the candidates that trades an optimal-transport alignment to
the target (query) set against a diversity regulariser built from a kernel density estimate, so that
near-copies share one share of mass. Its KNN-KDE algorithm solves this in closed form on each target's
``max_K`` nearest candidates:

1. for every target ``j``, its ``max_K`` nearest candidates in Euclidean distance, ``d_{j,0} <= d_{j,1}
   <= ...``;
2. for every candidate ``u`` among them, a kernel density over its ``kde_K`` nearest neighbours ``v``
   (itself included) among them, ``rho_u = sum_v max(0, 1 - |u - v|^2 / sigma^2)`` (``>= 1``);
3. a water level ``s``: target ``j`` sends mass ``w_{j,l} / (M s)`` with ``w = 1/rho`` to its
   neighbours while their cumulative weight stays within ``s``, and the rest of its ``1/M`` to the
   next one. ``s`` rises (neighbour by neighbour, lowest cumulative weight first) until the transport
   cost term reaches the regulariser's, ``alpha / C * cost >= (1 - alpha) * M``.

The paper then samples from ``p``; for a selection of ``k`` distinct candidates we take the top ``k``
by ``p`` (ties and candidates without mass by distance to the nearest target, then row). Public
settings: ``alpha = 0.5``, ``C = 5``, ``sigma = 0.75``, ``max_K = min(5000, N/10)``,
``kde_K = min(1000, N/10)``. Neighbours are found exactly (the paper uses a FAISS IVF index).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gotd.lab.evaluation.methods import register_method
from gotd.lab.evaluation.report import METHOD_NOTES
from gotd.lab.evaluation.tasks import SelectionInput

__all__ = ["TsdsSelector", "tsds_probabilities"]


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d2 = (a64**2).sum(1)[:, None] + (b64**2).sum(1)[None, :] - 2.0 * a64 @ b64.T
    out: np.ndarray = np.maximum(d2, 0.0)
    return out


def _nearest(d2: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` smallest entries in ascending order (ties by column)."""
    part = (
        np.argpartition(d2, k - 1, axis=1)[:, :k]
        if k < d2.shape[1]
        else np.tile(np.arange(d2.shape[1]), (len(d2), 1))
    )
    rows = np.arange(len(d2))[:, None]
    order = np.lexsort((part, d2[rows, part]), axis=1)
    return part[rows, order]


def tsds_probabilities(
    pool: np.ndarray,
    targets: np.ndarray,
    *,
    alpha: float = 0.5,
    c: float = 5.0,
    sigma: float = 0.75,
    max_k: int = 5000,
    kde_k: int = 1000,
) -> np.ndarray:
    """TSDS's probability of each pool row (KNN-KDE; see the module docstring).

    Parameters
    ----------
    pool : numpy.ndarray, shape (n, d)
    targets : numpy.ndarray, shape (m, d)
    alpha, c, sigma : float
        Trade-off, cost scale and kernel width.
    max_k, kde_k : int
        Neighbourhood sizes, capped at ``n // 10`` (at least 2 and 1).

    Returns
    -------
    numpy.ndarray, shape (n,)
        Non-negative, summing to 1.
    """
    n, m = len(pool), len(targets)
    max_k = max(2, min(max_k, n // 10, n))
    kde_k = max(1, min(kde_k, n // 10, n))
    d2 = _sq_dists(targets, pool)
    near = _nearest(d2, max_k)
    dist = np.sqrt(d2[np.arange(m)[:, None], near])
    union, inverse = np.unique(near, return_inverse=True)
    inverse = inverse.reshape(near.shape)
    if sigma > 0:
        du = _sq_dists(pool[union], pool[union])
        kk = min(kde_k, len(union))
        nn = np.partition(du, kk - 1, axis=1)[:, :kk] if kk < len(union) else du
        rho = np.maximum(0.0, 1.0 - nn / sigma**2).sum(axis=1)
    else:
        rho = np.ones(len(union))
    w = 1.0 / rho[inverse]  # (m, max_k)
    last = np.full(m, -1)  # last neighbour of each target paid in full
    count = w[:, 0].copy()
    weighted = dist[:, 0] * w[:, 0]
    cost = np.zeros(m)
    total, level = 0.0, float(count.min())
    heap = [(float(count[j]), 0, j) for j in range(m)]
    heapq.heapify(heap)
    while heap:
        level, at, j = heapq.heappop(heap)
        total -= cost[j]
        cost[j] = dist[j, at + 1] * level - weighted[j]
        total += cost[j]
        if alpha / c * total >= (1 - alpha) * m:
            break
        last[j] = at
        if at < max_k - 2:
            heapq.heappush(heap, (level + float(w[j, at + 1]), at + 1, j))
            weighted[j] += dist[j, at + 1] * w[j, at + 1]
    probs = np.zeros(n)
    for j in range(m):
        full = w[j, : last[j] + 1] / (m * level)
        np.add.at(probs, near[j, : last[j] + 1], full)
        probs[near[j, last[j] + 1]] += max(1.0 / m - float(full.sum()), 0.0)
    out: np.ndarray = probs / probs.sum()
    return out


@dataclass(slots=True)
class TsdsSelector:
    """TSDS (KNN-KDE), distinct top-k by assigned probability (see the module docstring)."""

    name: str
    alpha: float = 0.5
    c: float = 5.0
    sigma: float = 0.75
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        probs = tsds_probabilities(
            inp.pool_vectors, inp.target_vectors, alpha=self.alpha, c=self.c, sigma=self.sigma
        )
        nearest = _sq_dists(inp.pool_vectors, inp.target_vectors).min(axis=1)
        order = np.lexsort((np.arange(probs.size), nearest, -probs))
        self.diagnostics = {"with_mass": int((probs > 0).sum())}
        return order[:k].astype(np.int64)


register_method("tsds", lambda n, o: TsdsSelector(n), replace=True)
METHOD_NOTES.setdefault(
    "tsds",
    "TSDS (Liu et al., NeurIPS 2024), KNN-KDE algorithm written from the paper: OT alignment to the "
    "targets' nearest candidates with a kernel-density diversity term (alpha 0.5, C 5, sigma 0.75, "
    "max_K = min(5000, N/10), kde_K = min(1000, N/10), exact neighbours); the top k by assigned "
    "probability (candidates without mass after, by distance to the nearest target).",
)
