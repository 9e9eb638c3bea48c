"""Log-domain Sinkhorn on a small dense cost matrix (uniform weights), for many solves on one sample.

The blockwise :func:`gotd.server.ot.sinkhorn.sinkhorn` rebuilds the cost from a GEMM on every pass,
which is what a pool of millions needs. The validation of the cost (:mod:`gotd.server.selection.validation`)
solves dozens of small problems between the same points under different mixtures of two costs: there the
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

import torch

from gotd.server.ot.sinkhorn import SinkhornResult

__all__ = ["sinkhorn_dense"]


def sinkhorn_dense(
    cost: torch.Tensor, *, eps: float, tol: float = 1e-4, max_iter: int = 1000
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
    scaled = cost / eps
    log_a, log_b = -math.log(n), -math.log(m)
    g = torch.zeros(m, dtype=cost.dtype)
    f = -eps * torch.logsumexp((g / eps + log_b) - scaled, dim=1)
    error, passes = math.inf, 0
    while passes < max_iter:
        g = -eps * torch.logsumexp((f / eps + log_a)[:, None] - scaled, dim=0)
        f_next = -eps * torch.logsumexp((g / eps + log_b) - scaled, dim=1)
        passes += 1
        error = float(torch.expm1((f - f_next).double() / eps).abs().sum()) / n
        f = f_next
        if error <= tol or not math.isfinite(error):
            break
    value = float(f.double().mean() + g.double().mean())
    finite = bool(torch.isfinite(f).all() and torch.isfinite(g).all())
    return SinkhornResult(f, g, passes, error, finite and error <= tol, value, eps)
