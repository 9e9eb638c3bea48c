"""The OT gradient of Kang et al. (2024): a candidate's potential against the mean of the others'.

References
----------
.. [1] F. Kang et al., "Get more for less: Principled Data Selection for Warming Up Fine-Tuning in
   LLMs", ICLR 2024.
"""

from __future__ import annotations

import itertools
import math

import torch

__all__ = ["calibrated_gradient"]


def calibrated_gradient(f: torch.Tensor, *, total: float | None = None) -> torch.Tensor:
    """Calibrated gradient of the OT distance with respect to each candidate's mass (Kang et al., 2024).

    .. math::

        \\mathrm{grad}_i = f_i - \\frac{1}{n-1}\\sum_{k\\ne i} f_k

    The sum is exactly rounded in float64 (``math.fsum``), so it does not depend on the order of
    the candidates. It is increasing in :math:`f_i`: ranking by it equals ranking by ``f``.

    Parameters
    ----------
    f : torch.Tensor, shape (n,)
        Candidate potential.
    total : float, optional
        The exactly rounded sum of ``f`` when the caller keeps it (an epoch's values, kept
        incrementally by :class:`~gotd.server.ot.exact.ExactSum`); it must equal ``math.fsum(f)``.

    Returns
    -------
    torch.Tensor, shape (n,)
        Same dtype and device as ``f``; for ``n == 1`` the (empty) mean is taken as 0.
    """
    if f.ndim != 1:
        raise ValueError(f"f must be 1-D, got shape {tuple(f.shape)}")
    n = f.shape[0]
    with torch.no_grad():
        if n < 2:
            return f.detach().clone()
        f64 = f.detach().to(torch.float64)
        if total is None:  # exactly rounded, streamed in chunks: no list of n Python floats at once
            arr, step = f64.cpu().numpy(), 1 << 16
            chunks = (arr[s : s + step].tolist() for s in range(0, n, step))
            total = math.fsum(itertools.chain.from_iterable(chunks))
        return (f64 - (total - f64) / (n - 1)).to(f.dtype)
