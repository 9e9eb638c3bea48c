"""Log-domain Sinkhorn on a small dense cost matrix (uniform weights), for many solves on one sample.

The blockwise :func:`gotd.server.ot.sinkhorn.sinkhorn` rebuilds the cost from a GEMM on every pass
(from cross products formed once when they fit in 64 MB), which is what a pool of millions needs.
The validation of the cost (:mod:`gotd.server.selection.validation`) solves dozens of small problems
between the same points under different mixtures of two costs: there the
``(n, m)`` matrix is small (about 1,100 x 256), is formed once, and every pass is two logsumexps over it.
Same updates and convention as the blockwise solver:

.. math::

    f_i \\leftarrow -\\varepsilon \\log \\sum_j b_j e^{(g_j - C_{ij})/\\varepsilon}, \\qquad
    g_j \\leftarrow -\\varepsilon \\log \\sum_i a_i e^{(f_i - C_{ij})/\\varepsilon}

After a g-update the column marginals hold; the next f-update gives the row marginals of the previous
``(f, g)`` for free, :math:`(P\\mathbf 1)_i = a_i e^{(f_i - f^{new}_i)/\\varepsilon}`, so the L1 marginal
error costs nothing extra. The returned ``f`` is the c-transform of the returned ``g``.

References
----------
.. [1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gotd.server.ot.sinkhorn import SinkhornResult

__all__ = ["DenseWork", "sinkhorn_dense"]


class DenseWork:
    """Buffers of :func:`sinkhorn_dense` kept for its next solve of the same shape and dtype.

    Every pass writes two ``(n, m)`` matrices; above the server's mmap threshold
    (:mod:`gotd.server.service.allocator`) each fresh one is mapped and faulted in anew, which cost more
    than the arithmetic (docs/benchmarks/autocost-lean.md). One per thread: not shareable.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], np.dtype[np.generic]], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype[np.generic]) -> np.ndarray:
        """An uninitialised buffer of ``shape`` and ``dtype`` (the same one as last time for ``name``)."""
        key = (name, shape, dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = np.empty(shape, dtype=dtype)
        return buffer


def sinkhorn_dense(
    cost: torch.Tensor, *, eps: float, tol: float = 1e-4, max_iter: int = 1000, work: DenseWork | None = None
) -> SinkhornResult:
    """Entropic OT between uniform weights on the rows and columns of ``cost``.

    Parameters
    ----------
    cost : torch.Tensor, shape (n, m)
        Ground cost (float32 or float64), finite.
    eps : float
        Regularisation, positive.
    tol : float
        L1 marginal error (rows plus columns) at which to stop.
    max_iter : int
        Passes at most.
    work : DenseWork, optional
        Buffers to reuse (the result is the same with or without).

    Returns
    -------
    SinkhornResult
        ``f`` is the c-transform of ``g``; ``converged`` is False when ``max_iter`` came first.
    """
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"cost must be a non-empty 2-D tensor, got shape {tuple(cost.shape)}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be positive, got {eps!r}")
    n, m = cost.shape
    # numpy, single-threaded: torch's intra-op threads cost more than they save on matrices this
    # small, and far more on a loaded machine (measured: 63 ms vs about 1 ms per logsumexp)
    c = cost.detach().cpu().numpy()
    work = work or DenseWork()
    scaled_rows = work.get("rows", (n, m), c.dtype)  # reductions over j: rows contiguous
    np.divide(c, eps, out=scaled_rows)
    scaled_cols = work.get("cols", (m, n), c.dtype)  # reductions over i
    np.copyto(scaled_cols, scaled_rows.T)
    z_rows, z_cols = work.get("z_rows", (n, m), c.dtype), work.get("z_cols", (m, n), c.dtype)
    log_a, log_b = -math.log(n), -math.log(m)
    g = np.zeros(m, dtype=c.dtype)
    f = -eps * _lse(np.subtract(g / eps + log_b, scaled_rows, out=z_rows))
    error, passes = math.inf, 0
    while passes < max_iter:
        g = -eps * _lse(np.subtract(f / eps + log_a, scaled_cols, out=z_cols))
        f_next = -eps * _lse(np.subtract(g / eps + log_b, scaled_rows, out=z_rows))
        passes += 1
        error = float(np.abs(np.expm1((f - f_next).astype(np.float64) / eps)).sum()) / n
        f = f_next
        if error <= tol or not math.isfinite(error):
            break
    value = float(f.astype(np.float64).mean() + g.astype(np.float64).mean())
    finite = bool(np.isfinite(f).all() and np.isfinite(g).all())
    return SinkhornResult(
        torch.from_numpy(f), torch.from_numpy(g), passes, error, finite and error <= tol, value, eps
    )


def _lse(z: np.ndarray) -> np.ndarray:
    """Log-sum-exp of every row of ``z`` (modified in place)."""
    top = z.max(axis=1)
    np.subtract(z, top[:, None], out=z)
    np.exp(z, out=z)
    out: np.ndarray = top + np.log(z.sum(axis=1))
    return out
