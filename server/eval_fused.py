"""Fused-cost GOT-D for the evaluation: embedding cost plus hashed n-gram cost (issue 10).

Importing this module registers, through :func:`gotd.server.eval_methods.register_method`:

- ``gotd-fused-w{w}`` for ``w`` in 0.3, 0.5, 0.7, 1.0: the calibrated OT gradient (exact Sinkhorn
  between the whole pool and the targets, then :func:`gotd.server.ot.calibrated_gradient` of the
  candidate potential) on the fused features of :func:`gotd.server.features.fuse`, so the cost is
  ``w * ||e - e'||^2 + (1 - w) * ||s - s'||^2`` (MiniLM embedding ``e``, unit TF-IDF uni+bigram sketch
  ``s``, 2**13 signed buckets, IDF over the pool and targets of the selection). ``w = 1.0`` is the
  embedding-only control: the paper's cost with the same relative ε.
- ``-c{c}``: ε = ``c`` times the median fused cost between the pool (a 1,024-row seeded subsample)
  and the targets; without the suffix ``c = 0.05``. The run's ``MethodOptions.eps`` is not used.
- ``-nodup``: pool rows whose embedding has cosine > 0.95 to any target embedding (near-duplicates
  of the target set) are ranked after every other row.

The solve is exact and cheap at any sketch width: the cost only needs inner products with the ``m``
targets, so each fused vector is replaced by its coordinates in an orthonormal basis of the targets'
span plus one residual coordinate ``sqrt(||x||^2 - ||Qx||^2)`` (zero for targets). Squared distances
are unchanged to rounding, and Sinkhorn runs in ``m + 1`` dimensions.

Sketch counts are computed once per distinct text (:class:`gotd.server.features.SketchCache`, shared
by every fused method of the process), like cached embeddings; the time of the first sketching of a
text is reported in ``diagnostics['sketch_seconds']``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gotd.server.eval_methods import MethodOptions, Selector, order_by_score, register_method
from gotd.server.eval_report import METHOD_NOTES
from gotd.server.eval_tasks import SelectionInput
from gotd.server.features import DEFAULT_BUCKETS, SketchCache, fuse, idf_weights, median_cost, sketch
from gotd.server.ot import calibrated_gradient, sinkhorn

__all__ = ["DUP_COSINE", "FusedSelector", "project_to_targets"]

#: Cosine to a target embedding above which a pool row counts as a near-duplicate of the target set.
DUP_COSINE = 0.95
WEIGHTS = (0.3, 0.5, 0.7, 1.0)
RELATIVE_EPS = (0.05, 0.1)
DEFAULT_C = 0.05
_CACHES: dict[int, SketchCache] = {}


def _cache(buckets: int) -> SketchCache:
    if buckets not in _CACHES:
        _CACHES[buckets] = SketchCache(buckets=buckets)
    return _CACHES[buckets]


def project_to_targets(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isometric coordinates of ``x`` and ``y`` for costs between them: ``m + 1`` columns.

    With ``Q`` an orthonormal basis of the rows of ``y`` (thin QR), returns ``[x Q, r]`` and
    ``[y Q, 0]`` where ``r_i = sqrt(max(0, ||x_i||^2 - ||x_i Q||^2))``, so every
    ``||x_i - y_j||^2`` is kept (to rounding); distances among rows of ``x`` are not.

    Parameters
    ----------
    x, y : numpy.ndarray, shapes (n, d) and (m, d)

    Returns
    -------
    tuple of numpy.ndarray, shapes (n, r + 1) and (m, r + 1), float64, ``r = rank <= min(m, d)``
    """
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    q, _ = np.linalg.qr(y64.T)  # (d, m)
    xp, yp = x64 @ q, y64 @ q
    resid = np.sqrt(np.maximum((x64 * x64).sum(1) - (xp * xp).sum(1), 0.0))
    return np.hstack([xp, resid[:, None]]), np.hstack([yp, np.zeros((yp.shape[0], 1))])


@dataclass(slots=True)
class FusedSelector:
    """Calibrated OT gradient on fused embedding + n-gram features (see the module docstring).

    Attributes
    ----------
    name : str
    w : float
        Weight of the embedding cost.
    c : float
        ε as a multiple of the median fused cost.
    exclude_dups : bool
        Rank near-duplicates of the target set (cosine > :data:`DUP_COSINE`) last.
    buckets : int
        Sketch width.
    diagnostics : dict
        Of the last ranking: ``converged``, ``n_iter``, ``marginal_error``, ``eps``, ``median_cost``,
        ``excluded`` (near-duplicates moved last), ``sketch_seconds`` (new texts sketched).
    """

    name: str
    w: float
    c: float = DEFAULT_C
    exclude_dups: bool = False
    buckets: int = DEFAULT_BUCKETS
    tol: float = 1e-4
    max_iter: int = 1000
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        cache = _cache(self.buckets)
        start = time.perf_counter()
        seen = len(cache)
        pool_counts = cache.counts(inp.pool_texts)
        target_counts = cache.counts(inp.target_texts)
        sketch_seconds = time.perf_counter() - start if len(cache) > seen else 0.0
        if self.w < 1.0:
            idf = idf_weights([*pool_counts, *target_counts], self.buckets)
            x = fuse(inp.pool_vectors, sketch(pool_counts, self.buckets, idf=idf), self.w)
            y = fuse(inp.target_vectors, sketch(target_counts, self.buckets, idf=idf), self.w)
        else:
            x = inp.pool_vectors.astype(np.float32)
            y = inp.target_vectors.astype(np.float32)
        med = median_cost(x, y, seed=inp.seed)
        eps = self.c * med
        xp, yp = project_to_targets(x, y)
        res = sinkhorn(
            torch.from_numpy(xp), torch.from_numpy(yp), eps=eps, tol=self.tol, max_iter=self.max_iter
        )
        scores = calibrated_gradient(res.f).numpy().astype(np.float64)
        excluded = 0
        if self.exclude_dups:
            cos = inp.pool_vectors.astype(np.float64) @ inp.target_vectors.astype(np.float64).T
            dup = cos.max(axis=1) > DUP_COSINE
            excluded = int(dup.sum())
            scores = np.where(dup, np.inf, scores)
        self.diagnostics = {
            "converged": res.converged,
            "n_iter": res.n_iter,
            "marginal_error": res.marginal_error,
            "eps": eps,
            "median_cost": med,
            "excluded": excluded,
            "sketch_seconds": sketch_seconds,
        }
        return order_by_score(scores, k, descending=False)


def _factory(w: float, c: float, exclude_dups: bool) -> Any:
    def make(name: str, options: MethodOptions) -> Selector:
        del options  # ε is relative to the cost scale, not the run's eps
        return FusedSelector(name, w, c=c, exclude_dups=exclude_dups)

    return make


def _register() -> None:
    for w in WEIGHTS:
        for c in RELATIVE_EPS:
            for nodup in (False, True):
                name = f"gotd-fused-w{w}" + ("" if c == DEFAULT_C else f"-c{c}") + ("-nodup" if nodup else "")
                register_method(name, _factory(w, c, nodup), replace=True)
                METHOD_NOTES.setdefault(name, _note(w, c, nodup))


def _note(w: float, c: float, nodup: bool) -> str:
    """The report's description of a fused method."""
    cost = (
        "squared Euclidean cost on the embeddings alone (control: the paper's cost, relative ε)"
        if w == 1.0
        else f"fused cost {w:g} · embedding cost + {1 - w:g} · n-gram cost (unit TF-IDF uni+bigram "
        f"sketch, {DEFAULT_BUCKETS} signed xxh3 buckets, IDF over pool and targets)"
    )
    dup = f"; pool rows with embedding cosine > {DUP_COSINE} to a target ranked last" if nodup else ""
    return (
        f"GOT-D calibrated gradient, exact Sinkhorn (tol 1e-4, ε-scaling) on the {cost}; "
        f"ε = {c:g} × median pool-target cost{dup}."
    )


_register()
