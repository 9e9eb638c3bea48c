"""Cost-scale and change-of-coordinates helpers for the OT solves (pure torch).

- :func:`median_cost`: the median squared Euclidean cost between two point sets, which sets a
  relative entropic regularisation (``eps = c * median``), so one ``c`` means the same amount of
  smoothing whatever the scale of the cost (embedding, fused embedding + n-gram, another encoder).
- :func:`project_to_targets`: isometric coordinates for candidate-target distances. With ``Q`` an
  orthonormal basis of the targets' span, a candidate ``x`` becomes ``(x Q, r)`` with
  ``r = sqrt(||x||^2 - ||x Q||^2)`` and a target ``y`` becomes ``(y Q, 0)``, so
  ``||x - y||^2`` is unchanged for every candidate-target pair while the dimension drops from
  ``d`` to ``rank(Y) + 1 <= m + 1``. Sinkhorn only ever needs those pairwise costs, so each pass
  gets ``(m + 1) / d`` times cheaper; useful for high-dimensional fused features and small target
  sets. Distances among candidates are not kept (nothing here uses them).
"""

from __future__ import annotations

import torch

from gotd.server.ot.rows import Rows, block

__all__ = ["median_cost", "project_to_targets", "worth_projecting"]

_PROJECT_ROWS = 1 << 14


def median_cost(x: torch.Tensor, y: torch.Tensor) -> float:
    """Median of the squared Euclidean costs between every row of ``x`` and every row of ``y``.

    Parameters
    ----------
    x, y : torch.Tensor, shapes (n, d) and (m, d)
        Small samples (the ``n x m`` costs are formed, in float64).

    Returns
    -------
    float
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(
            f"need non-empty (n, d) and (m, d) tensors, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x64, y64 = x.double(), y.double()
    cost = (x64 * x64).sum(1)[:, None] + (y64 * y64).sum(1)[None, :] - 2.0 * x64 @ y64.T
    return float(torch.quantile(cost.clamp_min(0.0).flatten(), 0.5))  # numpy.median (mean of middle two)


def worth_projecting(n_targets: int, dim: int) -> bool:
    """Whether the projected dimension (at most ``m + 1``) is at most half of ``dim``."""
    return 2 * (n_targets + 1) <= dim


def project_to_targets(x: Rows, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates ``(x Q, r)`` and ``(y Q, 0)`` that keep every candidate-target distance.

    Parameters
    ----------
    x, y : torch.Tensor or StackedRows, and torch.Tensor; shapes (n, d) and (m, d)
        Candidates and targets (same dtype and device); compact rows are projected block by block.

    Returns
    -------
    tuple of torch.Tensor, shapes (n, r + 1) and (m, r + 1)
        In the dtype of ``x``; ``r = min(m, d)``. The basis comes from a float64 QR of ``y``; the
        residual is formed from float64 norms.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (n, d) and (m, d) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    q64, _ = torch.linalg.qr(y.double().T)  # (d, r)
    q = q64.to(x.dtype)
    n = x.shape[0]
    step = n if isinstance(x, torch.Tensor) else _PROJECT_ROWS
    out = torch.empty((n, q.shape[1] + 1), dtype=x.dtype, device=x.device)
    for start in range(0, n, step):
        xb = block(x, start, min(n, start + step))
        xq = xb @ q
        norms = (xb.double() * xb.double()).sum(1) - (xq.double() * xq.double()).sum(1)
        out[start : start + len(xb), :-1] = xq
        out[start : start + len(xb), -1] = norms.clamp_min(0.0).sqrt().to(x.dtype)
    yq = (y.double() @ q64).to(y.dtype)
    return out, torch.cat([yq, torch.zeros_like(yq[:, :1])], 1)
