"""Entropic optimal transport in the log domain over row blocks: Sinkhorn and the c-transform.

Pure functions over torch tensors (float32 by default, float64 allowed; CPU or CUDA with the same
code). The squared Euclidean cost is never materialised as an ``(n, m)`` matrix: every pass walks the
candidates in blocks of rows and builds one block of scaled cost from a single GEMM (``addmm``).

Convention (weights factored out, as in ott-jax and GeomLoss):

.. math::

    P_{ij} = a_i b_j \\exp\\big((f_i + g_j - C_{ij})/\\varepsilon\\big), \\qquad
    C_{ij} = \\lVert x_i - y_j \\rVert^2 .

References
----------
.. [1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
.. [2] F. Kang et al., "Get more for less: Principled Data Selection for Warming Up Fine-Tuning in
   LLMs", ICLR 2024.
.. [3] B. Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport
   Problems", SIAM J. Sci. Comput. 2019 (log-domain updates, epsilon scaling).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gotd.server.ot.blocks import (
    BLOCK_BYTES,
    Geometry,
    check_pair,
    fused_pass,
    potential,
    softmax_rows,
    weights,
)
from gotd.server.ot.rows import Rows, take

LOG = logging.getLogger(__name__)

__all__ = [
    "RUN_BLOCK_BYTES",
    "SinkhornResult",
    "block_rows",
    "c_transform",
    "c_transform_span",
    "epsilon_schedule",
    "sinkhorn",
]

#: Epsilon scaling: levels ``EPS_SCALING_START * eps * 0.5**k`` (capped by the cost's diameter) above ``eps``,
#: one pass each. Starting higher only adds passes on unit-norm embeddings (docs/benchmarks/ot.md).
EPS_SCALING_START = 16.0

#: A dense solve whose ``(n, m)`` cross products ``x . y`` take at most this many bytes forms them once
#: and scales them on every pass instead of running the GEMM again (the global mode's 8,192-row summary
#: against 1k targets: 32 MB; one GEMM per solve instead of one per pass).
FORMED_COST_BYTES = 64 << 20

#: Bytes of the buffer a pass over formed cross products fills per block: 2,048 rows at m = 1k, in
#: whole chunks of ``col_sum``. The summary's solve held the 32 MB of products and a 32 MB buffer
#: beside them, the peak of a cold global Select on a 1M-row pool (+78 MB over its scoring pass).
FORMED_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class SinkhornResult:
    """Dual potentials of an entropic OT solve and an honest account of its convergence.

    Attributes
    ----------
    f : torch.Tensor, shape (n,)
        Candidate potential, the c-transform of ``g`` (row marginals hold to rounding).
    g : torch.Tensor, shape (m,)
        Target potential.
    n_iter : int
        Sinkhorn passes run, epsilon-scaling levels included.
    marginal_error : float
        :math:`\\lVert P\\mathbf{1} - a\\rVert_1 + \\lVert P^\\top\\mathbf{1} - b\\rVert_1` of ``(f, g)``.
    converged : bool
        ``marginal_error <= tol`` and everything finite (False when ``max_iter`` was hit first).
    cost : float
        :math:`\\langle a, f\\rangle + \\langle b, g\\rangle` (float64 sums).
    eps : float
        Regularisation of the returned potentials.
    """

    f: torch.Tensor
    g: torch.Tensor
    n_iter: int
    marginal_error: float
    converged: bool
    cost: float
    eps: float


def epsilon_schedule(eps: float, diameter: float) -> list[float]:
    """Levels run before ``eps`` on a cold start: ``min(diameter, 16 eps) * 0.5**k``, all above ``eps``."""
    levels: list[float] = []
    level = min(diameter, EPS_SCALING_START * eps)
    while level > eps:
        levels.append(level)
        level *= 0.5
    return levels


def sinkhorn(
    x: Rows,
    y: torch.Tensor,
    *,
    eps: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    tol: float = 1e-5,
    max_iter: int = 1000,
    init_g: torch.Tensor | None = None,
    block_size: int | None = None,
    eps_scaling: bool = True,
    check_every: int = 1,
    callback: Callable[[int, float], None] | None = None,
    on_block: Callable[[], None] | None = None,
) -> SinkhornResult:
    """Log-domain Sinkhorn between candidates ``x`` and targets ``y`` for the squared Euclidean cost.

    Each pass updates both potentials with one GEMM per block of rows (a dense problem whose cross
    products fit in :data:`FORMED_COST_BYTES` forms them once per solve and scales them instead):

    .. math::

        f_i &\\leftarrow -\\varepsilon \\log \\sum_j b_j \\exp\\big((g_j - C_{ij})/\\varepsilon\\big) \\\\
        g_j &\\leftarrow -\\varepsilon \\log \\sum_i a_i \\exp\\big((f_i - C_{ij})/\\varepsilon\\big)

    with :math:`C_{ij} = \\lVert x_i\\rVert^2 + \\lVert y_j\\rVert^2 - 2 x_i \\cdot y_j` folded into the
    ``addmm``. The row softmax of a block gives the column marginal :math:`(P^\\top\\mathbf 1)_j` of
    ``(f, g)`` by a matrix-vector product, so the g-update is
    :math:`g_j \\leftarrow g_j - \\varepsilon\\log\\big((P^\\top\\mathbf 1)_j / b_j\\big)` and the marginal
    error is known after every pass at no extra cost. Columns whose marginal underflows (far from
    the fixed point at small ``eps``) are recomputed with a streaming logsumexp over the row blocks
    (running max and rescaled sum per column).

    Cold starts run one pass per level of :func:`epsilon_schedule` (epsilon scaling) and check the
    marginal error only at the target ``eps``. With ``init_g`` there is no scaling and the first
    check follows the first pass, so a converged warm start stops at once.

    Parameters
    ----------
    x, y : torch.Tensor or StackedRows, and torch.Tensor; shapes (n, d) and (m, d)
        Candidates and targets, both float32 or both float64, on one device (compact
        :class:`gotd.server.ot.rows.StackedRows` candidates are read as float32, block by block).
    eps : float
        Entropic regularisation :math:`\\varepsilon > 0` (stable down to 0.01 on unit-norm data).
    a, b : torch.Tensor, shape (n,) and (m,), optional
        Positive weights (normalised to sum 1); uniform when None.
    tol : float
        Stop when the L1 marginal error is at most ``tol``.
    max_iter : int
        Maximum passes, epsilon-scaling levels included.
    init_g : torch.Tensor, shape (m,), optional
        Warm-start target potential (any dtype; cast to ``x.dtype``).
    block_size : int, optional
        Rows per block; default: a block of cost is about 32 MB.
    eps_scaling : bool
        Anneal epsilon on cold starts.
    check_every : int
        Passes between convergence checks at the target ``eps`` (a check is free: it reuses the
        pass's column marginals).
    callback : callable, optional
        ``callback(iteration, marginal_error)`` at every check; an exception it raises propagates.
    on_block : callable, optional
        ``on_block()`` before every block of every pass (e.g. a cancellation check, so a stop does not
        wait for the end of a pass); an exception it raises propagates.

    Returns
    -------
    SinkhornResult
        ``f = c_transform(x, y, g)``; ``converged`` is False when ``max_iter`` was hit first.

    Raises
    ------
    ValueError
        On inconsistent shapes, dtypes or devices, non-positive weights or bad parameters.

    References
    ----------
    .. [1] M. Cuturi, NeurIPS 2013. .. [2] F. Kang et al., ICLR 2024. .. [3] B. Schmitzer, 2019.
    """
    n, m = check_pair(x, y, eps)
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if max_iter < 1 or check_every < 1:
        raise ValueError(f"max_iter and check_every must be >= 1, got {max_iter!r}, {check_every!r}")
    a_w, b_w = weights(a, n, x, "a"), weights(b, m, x, "b")
    with torch.no_grad():
        pass_rows = None if block_size is not None else _formed_rows(m, x.element_size())
        geo = Geometry.of(x, y, block_size).with_cross(FORMED_COST_BYTES, pass_rows)
        levels: list[float] = []
        if init_g is not None:
            g = potential(init_g, m, x, "init_g").clone()
        else:
            g = torch.zeros(m, dtype=x.dtype, device=x.device)
            if eps_scaling:
                levels = epsilon_schedule(eps, (geo.xn.max().sqrt() + geo.yn.max().sqrt()).item() ** 2)
                levels = levels[max(0, len(levels) - (max_iter - 1)) :]
        buf = geo.buffer()
        for level in levels:
            g = fused_pass(geo, g, eps=level, a_w=a_w, b_w=b_w, buf=buf, on_block=on_block).g_next
        n_iter = len(levels)
        for phase in range(1, max_iter - n_iter + 1):
            step = fused_pass(geo, g, eps=eps, a_w=a_w, b_w=b_w, buf=buf, on_block=on_block)
            last = n_iter + phase == max_iter
            if phase == 1 or phase % check_every == 0 or last:
                error = float((step.col_marginal - b_w.double()).abs().sum())
                finite = math.isfinite(error) and bool(torch.isfinite(step.f).all())
                error = error if finite else math.inf
                if callback is not None:
                    callback(n_iter + phase, error)
                if error <= tol or last or not finite:
                    break
            g = step.g_next
        n_iter += phase
        cost = float(a_w.double() @ step.f.double() + b_w.double() @ g.double())
        converged = error <= tol and math.isfinite(cost)
    LOG.debug("sinkhorn n=%d m=%d eps=%g: %d passes, error %.3g", n, m, eps, n_iter, error)
    return SinkhornResult(
        f=step.f, g=g, n_iter=n_iter, marginal_error=error, converged=converged, cost=cost, eps=float(eps)
    )


#: A row block of :func:`c_transform` with fewer than ``MIN_GEMM_ROWS`` rows, or not a multiple of
#: ``GEMM_ROW_QUANTUM``, is computed inside a block that is: the whole quanta of rows that end with it
#: (the rows before it computed again, their values dropped) when ``x`` has them, else a block padded
#: with copies of its first row. The BLAS takes other kernels for small GEMMs (measured: below 57 rows
#: at d = 384 on two threads) and the row reductions treat a ragged tail of rows apart, each with its
#: own float32 rounding; in whole quanta, a row's value has the same bits in any block and any subset
#: of rows.
MIN_GEMM_ROWS = 512
GEMM_ROW_QUANTUM = 64
#: Cost bytes of a block for a pass over a few thousand rows (the rows written since an epoch): one
#: buffer of this size serves every block, where a single block of all the rows would be a buffer of
#: their whole cost, freshly mapped and faulted in page by page in the server (allocator.py). Measured
#: on 5,000 x 1,000 (2 cores): 22 ms in blocks of 1,024 rows against 30 ms in one block; the same bits.
RUN_BLOCK_BYTES = 4 << 20


def block_rows(m: int, element_size: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows of a block of about ``block_bytes`` of cost against ``m`` targets: whole quanta, at least
    ``MIN_GEMM_ROWS`` (so a row's value has the same bits whatever the block size)."""
    quanta = block_bytes // (m * element_size) // GEMM_ROW_QUANTUM
    return max(MIN_GEMM_ROWS, quanta * GEMM_ROW_QUANTUM)


def c_transform(
    x: Rows,
    y: torch.Tensor,
    g: torch.Tensor,
    *,
    eps: float,
    b: torch.Tensor | None = None,
    block_size: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Soft c-transform of a target potential: the Sinkhorn f-update, one GEMM and logsumexp per block.

    .. math::

        f_i = -\\varepsilon \\log \\sum_j b_j \\exp\\big((g_j - C_{ij})/\\varepsilon\\big)
            = \\lVert x_i\\rVert^2 - \\varepsilon\\,\\mathrm{LSE}_j\\big(h_j + \\tfrac{2}{\\varepsilon}
              x_i\\cdot y_j\\big), \\quad h_j = \\log b_j + (g_j - \\lVert y_j\\rVert^2)/\\varepsilon .

    Each row of ``f`` depends only on its own candidate, so any pool (or any shard of it) is scored
    with the same ``g`` without a solve (Kang et al., 2024, "global" selection); a ragged block is
    computed in whole quanta (``MIN_GEMM_ROWS``), so a row's value has the same bits whichever rows
    it is scored with (incremental selection scores only the rows that changed and merges).

    Parameters
    ----------
    x, y : torch.Tensor or StackedRows, and torch.Tensor; shapes (n, d) and (m, d)
        Candidates and targets, both float32 or both float64, on one device (compact
        :class:`gotd.server.ot.rows.StackedRows` candidates are read as float32, block by block).
    g : torch.Tensor, shape (m,)
        Target potential (cast to ``x.dtype``).
    eps : float
        Entropic regularisation.
    b : torch.Tensor, shape (m,), optional
        Positive target weights (normalised); uniform when None.
    block_size : int, optional
        Rows per block; default: a block of cost is about 32 MB (8,384 rows at m = 1k, float32).
    callback : callable, optional
        ``callback(rows_done, n)`` after each block; an exception it raises propagates.

    Returns
    -------
    torch.Tensor, shape (n,)
        ``f`` in ``x.dtype`` on ``x.device``.

    References
    ----------
    .. [1] M. Cuturi, NeurIPS 2013. .. [2] F. Kang et al., ICLR 2024.
    """
    n, m = check_pair(x, y, eps)
    b_w = weights(b, m, x, "b")
    if block_size is None:  # whole quanta: only the last block is ragged
        block_size = block_rows(m, x.element_size())
    with torch.no_grad():
        geo = Geometry.of(x, y, block_size)
        h = b_w.log() + (potential(g, m, x, "g") - geo.yn) / eps
        lse = torch.empty_like(geo.xn)
        buf = geo.buffer()
        for start, stop in geo.blocks():
            size = stop - start
            whole = _whole_rows(size)
            if size == whole:
                lse[start:stop] = softmax_rows(geo, start, h, eps, buf[:size])[0]
            elif whole <= min(stop, len(buf)):  # ragged: whole quanta ending with it, earlier rows redone
                lse[start:stop] = softmax_rows(geo, stop - whole, h, eps, buf[:whole])[0][whole - size :]
            else:
                lse[start:stop] = _padded_lse(x, start, stop, y, h, eps)
            if callback is not None:
                callback(stop, n)
        return torch.sub(geo.xn, lse, alpha=eps)


def c_transform_span(
    x: torch.Tensor,
    start: int,
    stop: int,
    y: torch.Tensor,
    g: torch.Tensor,
    *,
    eps: float,
    block_size: int | None = None,
) -> torch.Tensor:
    """:func:`c_transform` of the rows ``start:stop`` of ``x``, the same bits, without a copy of them.

    The rows are scored in a view of ``x`` that starts up to ``MIN_GEMM_ROWS`` rows earlier, so their
    blocks are whole quanta (the padded block of a ragged one is then not needed); the earlier rows'
    values are dropped. For the rows appended to a pool since a potential epoch (a contiguous run).

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
        Candidates (float32 or float64); ``0 <= start < stop <= n``.
    y, g, eps, block_size
        As in :func:`c_transform`.

    Returns
    -------
    torch.Tensor, shape (stop - start,)
    """
    if not 0 <= start < stop <= x.shape[0]:
        raise ValueError(f"need 0 <= start < stop <= {x.shape[0]}, got {start}, {stop}")
    size = stop - start
    lead = min(start, _whole_rows(size) - size)
    return c_transform(x[start - lead : stop], y, g, eps=eps, block_size=block_size)[lead:]


def _whole_rows(size: int) -> int:
    """Rows of the block a ragged ``size`` rows are computed in: whole quanta, at least ``MIN_GEMM_ROWS``."""
    return max(MIN_GEMM_ROWS, -(-size // GEMM_ROW_QUANTUM) * GEMM_ROW_QUANTUM)


def _padded_lse(x: Rows, start: int, stop: int, y: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """``LSE_j(h_j + (2/eps) x_i.y_j)`` of the ragged block ``start:stop``, computed inside a block of
    whole quanta (padded with copies of its first row, whose values are dropped)."""
    n = stop - start
    rows = _whole_rows(n)
    index = torch.full((rows,), start, dtype=torch.long, device=y.device)
    index[:n] = torch.arange(start, stop, device=y.device)
    geo = Geometry.of(take(x, index), y, rows)
    buf = geo.buffer()
    return softmax_rows(geo, 0, h, eps, buf)[0][:n]


def _formed_rows(m: int, element_size: int) -> int:
    """Rows of a pass's block over formed cross products (``FORMED_BLOCK_BYTES``): whole 512-row
    chunks of :func:`gotd.server.ot.blocks.col_sum`, at least one."""
    return max(1, FORMED_BLOCK_BYTES // (m * element_size) // 512) * 512
