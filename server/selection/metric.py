r"""A metric on the fused rows learned from the target set: the direction of a target-vs-pool discriminator.

The fused cost compares rows ``(sqrt(w) e, sqrt(1 - w) s)`` (unit embedding ``e``, unit TF-IDF sketch
``s``) by squared Euclidean distance. A linear discriminator of the target set against the pool, fitted
on both halves' columns ``x = (e, s)``, finds the direction ``v`` along which targets and pool differ;
the learned cost adds the squared difference along it,

.. math::

    c(x, y) = w \lVert e_x - e_y \rVert^2 + (1 - w) \lVert s_x - s_y \rVert^2 + (v \cdot x - v \cdot y)^2 ,

the Mahalanobis metric ``diag(w, 1 - w) + v v^T`` ([2]_): distances stretched along the direction a
discriminant separates, as in discriminant adaptive nearest-neighbour metrics ([1]_). It is one more
column of the rows, ``v . x`` (the discriminator's score up to a constant), so the OT engine runs
unchanged: :func:`gotd.server.selection.costs.pool_features` adds it as a part of the compact rows,
computed blockwise from the stored embeddings and term frequencies (4 bytes a row).

The discriminator is an L2-regularised logistic regression (a probabilistic classifier of the density
ratio between target and pool, [3]_) on standardised columns, the classes weighted equally, fitted by
a few Newton steps with conjugate-gradient inner solves from zero in float32 numpy (the column
statistics and the fitted direction in float64): deterministic for the same rows. The *strength*
``lambda`` sets the scale of ``v``: the spread of ``v . x`` over the fitted pool rows is ``lambda``
times the fused rows' total spread ``w sum var(e_j) + (1 - w) sum var(s_j)``. Strength 0 is the plain
fused cost.

A diagonal metric read off the same discriminator (each column scaled by ``1 + lambda |beta_j|``,
normalised) was measured first and lost precision (docs/evaluation.md, "Learned metric").

References
----------
.. [1] T. Hastie, R. Tibshirani, "Discriminant adaptive nearest neighbor classification", IEEE
   Transactions on Pattern Analysis and Machine Intelligence 18(6), 1996.
.. [2] E. P. Xing, A. Y. Ng, M. I. Jordan, S. Russell, "Distance metric learning, with application to
   clustering with side-information", NIPS 2002.
.. [3] M. Sugiyama, T. Suzuki, T. Kanamori, "Density Ratio Estimation in Machine Learning", Cambridge
   University Press, 2012, chapter 4 (probabilistic classification).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xxhash

__all__ = ["Discriminant", "LearnedMetric", "discriminant", "fit_metric"]

_NEWTON_STEPS = 4
_CG_STEPS = 10

Halves = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True, eq=False)
class LearnedMetric:
    """The scaled direction ``v`` of the learned cost over the unweighted columns ``(e, s)``.

    Attributes
    ----------
    embedding : numpy.ndarray, shape (d,), float32
        ``v`` over the embedding columns.
    sketch : numpy.ndarray, shape (buckets,), float32
        ``v`` over the unit sketch columns (after the IDF weights and the row's unit norm).
    """

    embedding: np.ndarray
    sketch: np.ndarray

    def __post_init__(self) -> None:
        for name in ("embedding", "sketch"):
            value = np.array(getattr(self, name), dtype=np.float32, copy=True)  # owned, writable (torch)
            if value.ndim != 1 or not np.isfinite(value).all():
                raise ValueError(f"{name} must be a 1-D array of finite numbers")
            object.__setattr__(self, name, value)

    @property
    def factors(self) -> np.ndarray:
        """Both halves of ``v``, embedding columns first (what the cache stores)."""
        return np.concatenate([self.embedding, self.sketch])

    @property
    def digest(self) -> str:
        """Hash of ``v``: names the metric in cache keys and feature tags."""
        return xxhash.xxh3_64_hexdigest(self.factors.tobytes())

    @staticmethod
    def split(factors: np.ndarray, dim: int) -> LearnedMetric:
        """The metric whose :attr:`factors` are ``factors``, the first ``dim`` the embedding's."""
        factors = np.asarray(factors, dtype=np.float32)
        if not 0 < dim < factors.shape[0]:
            raise ValueError(f"dim must be in (0, {factors.shape[0]}), got {dim!r}")
        return LearnedMetric(factors[:dim], factors[dim:])

    def project(self, rows: Halves) -> np.ndarray:
        """``v . x`` of rows given as (embeddings, unit sketches): the learned column, float32."""
        out: np.ndarray = (rows[0].astype(np.float32, copy=False) @ self.embedding) + (
            rows[1].astype(np.float32, copy=False) @ self.sketch
        )
        return out


@dataclass(frozen=True, slots=True)
class Discriminant:
    """A fitted discriminator: its direction over the raw columns and the spreads that scale it.

    Attributes
    ----------
    direction : numpy.ndarray, shape (d + buckets,), float64
        Coefficients over the unstandardised columns (0 on constant columns).
    dim : int
        Embedding columns (the first ``dim``).
    spread_embedding, spread_sketch : float
        ``sum var`` of each half's columns over the fitted rows.
    projected_variance : float
        Variance of ``direction . x`` over the fitted pool rows.
    """

    direction: np.ndarray
    dim: int
    spread_embedding: float
    spread_sketch: float
    projected_variance: float

    def metric(self, weight: float, strength: float) -> LearnedMetric:
        """The learned metric at embedding weight ``weight`` and ``strength`` (see the module docstring)."""
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength must be >= 0, got {strength!r}")
        spread = weight * self.spread_embedding + (1.0 - weight) * self.spread_sketch
        scale = math.sqrt(strength * spread / self.projected_variance) if self.projected_variance > 0 else 0.0
        v = self.direction * scale
        return LearnedMetric(v[: self.dim], v[self.dim :])


def fit_metric(positives: Halves, negatives: Halves, *, weight: float, strength: float) -> LearnedMetric:
    """The learned metric of targets ``positives`` against pool rows ``negatives`` (``(e, s)`` each).

    No pool rows, or strength 0: the zero direction (the plain fused cost).
    """
    return discriminant(positives, negatives).metric(weight, strength)


def discriminant(positives: Halves, negatives: Halves, *, l2: float = 0.05) -> Discriminant:
    """The logistic target-vs-pool discriminator of rows given as (embeddings, unit sketches).

    Columns are standardised over the fitted rows (constant columns get coefficient 0); the classes
    weigh the same; ridge penalty ``l2`` on the standardised coefficients (the loss is a weighted mean).
    """
    p, q, d = positives[0].shape[0], negatives[0].shape[0], positives[0].shape[1]
    if p < 1 or q < 1:
        return Discriminant(np.zeros(d + positives[1].shape[1]), d, 0.0, 0.0, 0.0)
    x = np.empty((p + q, d + positives[1].shape[1]), dtype=np.float32)
    for at, rows in ((0, positives), (p, negatives)):
        x[at : at + rows[0].shape[0], :d], x[at : at + rows[0].shape[0], d:] = rows
    # np.var's own steps (the mean, the centred rows in float64), kept: the standardised columns are
    # the centred ones divided by their deviation, so the same numbers without a second pass
    mean = np.add.reduce(x, axis=0, dtype=np.float64) / x.shape[0]
    centred = np.subtract(x, mean)
    variance = np.add.reduce(np.square(centred), axis=0) / x.shape[0]
    sd = np.sqrt(variance)
    live = sd > 1e-8
    z = np.zeros((x.shape[0], x.shape[1] + 1), dtype=np.float32)  # the last column: the intercept's
    if live.all():
        np.divide(centred, sd, out=z[:, :-1], casting="same_kind")
    else:
        z[:, :-1][:, live] = centred[:, live] / sd[live]
    z[:, -1] = 1.0
    t = np.concatenate([np.ones(p), np.zeros(q)]).astype(np.float32)
    s = np.concatenate([np.full(p, 0.5 / p), np.full(q, 0.5 / q)]).astype(np.float32)
    beta = _logistic(z, t, s, l2).astype(np.float64)
    direction = np.zeros_like(beta)
    direction[live] = beta[live] / sd[live]
    projected = x[p:].astype(np.float64) @ direction
    return Discriminant(
        direction, d, float(variance[:d].sum()), float(variance[d:].sum()), float(projected.var())
    )


def _logistic(zb: np.ndarray, t: np.ndarray, s: np.ndarray, l2: float) -> np.ndarray:
    """Coefficients of the weighted ridge logistic regression (the last column of ``zb`` is the
    unpenalised intercept's, not returned), Newton-CG from 0 in float32: the products with ``zb`` are
    the cost, and read half the memory of float64."""
    dim = zb.shape[1]
    penalty = np.full(dim, l2, dtype=np.float32)
    penalty[-1] = 0.0
    theta = np.zeros(dim, dtype=np.float32)
    for _ in range(_NEWTON_STEPS):
        prob = 1.0 / (1.0 + np.exp(-(zb @ theta)))
        grad = zb.T @ (s * (prob - t)) + penalty * theta
        h = s * prob * (1.0 - prob) + np.float32(1e-12)

        def hessian(v: np.ndarray, h: np.ndarray = h) -> np.ndarray:
            out: np.ndarray = zb.T @ (h * (zb @ v)) + (penalty + np.float32(1e-9)) * v
            return out

        theta -= _cg(hessian, grad)
    out: np.ndarray = theta[:-1]
    return out


def _cg(apply: Callable[[np.ndarray], np.ndarray], b: np.ndarray) -> np.ndarray:
    """A fixed number of conjugate-gradient steps for ``apply(x) = b`` from 0 (stops early on convergence)."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = float(r @ r)
    stop = 1e-12 * max(rr, 1e-30)
    for _ in range(_CG_STEPS):
        if rr <= stop:
            break
        ap = apply(p)
        alpha = rr / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        new = float(r @ r)
        p = r + (new / rr) * p
        rr = new
    return x
