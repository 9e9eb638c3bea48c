r"""Blockwise kernels of the OT engine: cost blocks from GEMMs, in-place softmax/logsumexp passes.

Shared by :mod:`gotd.server.ot.sinkhorn` and the distributed scorer; pure torch, no state. The cost
:math:`C_{ij} = \|x_i\|^2 + \|y_j\|^2 - 2 x_i \cdot y_j` is built block by block of rows and
never held whole. The candidates are a dense tensor (one GEMM per block) or compact stored rows
(:class:`gotd.server.ot.rows.StackedRows`: each block upcast to float32, one GEMM per part into one
accumulator). A small dense problem (a summary of the pool) may carry its cross products
:math:`x_i \cdot y_j` formed once (``Geometry.cross``): every pass then scales them instead of
running the GEMM again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from gotd.server.ot.rows import Rows, addmm_rows, sq_norms, target_parts

BLOCK_BYTES = 32 << 20  # one block of scaled cost; 8k rows for m = 1k in float32


@dataclass(frozen=True, slots=True)
class Geometry:
    """Candidates and targets with squared norms, walked in blocks of ``rows`` rows.

    ``ys`` are the targets as multiplied with the candidates' parts (``(y,)`` for dense candidates);
    ``cross`` is ``x @ y.T`` when it was formed once for many passes (:meth:`with_cross`), else None.
    """

    x: Rows
    y: torch.Tensor
    xn: torch.Tensor
    yn: torch.Tensor
    rows: int
    ys: tuple[torch.Tensor, ...]
    cross: torch.Tensor | None = None

    @staticmethod
    def of(x: Rows, y: torch.Tensor, block_size: int | None) -> Geometry:
        n, m = x.shape[0], y.shape[0]
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size!r}")
        rows = max(1, BLOCK_BYTES // (m * x.element_size())) if block_size is None else block_size
        rows = min(n, rows)
        yn = torch.linalg.vector_norm(y, dim=1).square_()
        return Geometry(x=x, y=y, xn=sq_norms(x), yn=yn, rows=rows, ys=target_parts(x, y))

    def with_cross(self, max_bytes: int, pass_rows: int | None = None) -> Geometry:
        """This geometry with ``x @ y.T`` formed once, when the ``(n, m)`` products take at most
        ``max_bytes``; else itself. Formed block by block with the GEMMs of a pass (:func:`addmm_rows`),
        so dense and compact rows of the same values give the same bits, as they do without it.
        ``pass_rows``: the passes over the formed products then walk blocks of at most that many rows
        (no GEMM left to feed: a smaller buffer beside the products)."""
        n, m = self.x.shape[0], self.y.shape[0]
        if n * m * self.y.element_size() > max_bytes:
            return self
        cross = torch.empty((n, m), dtype=self.y.dtype, device=self.y.device)
        zero = torch.zeros((), dtype=self.y.dtype, device=self.y.device)
        for start, stop in self.blocks():
            addmm_rows(zero, self.x, start, stop, self.ys, alpha=1.0, out=cross[start:stop])
        rows = self.rows if pass_rows is None else max(1, min(self.rows, pass_rows))
        return replace(self, cross=cross, rows=rows)

    def scaled_cross(
        self,
        bias: torch.Tensor,
        start: int,
        stop: int,
        *,
        alpha: float,
        cols: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``bias + alpha * x[start:stop] @ y[cols].T``: from the formed products, else one GEMM."""
        if self.cross is None:
            ys = self.ys if cols is None else tuple(y[cols] for y in self.ys)
            return addmm_rows(bias, self.x, start, stop, ys, alpha=alpha, out=out)
        cross = self.cross[start:stop] if cols is None else self.cross[start:stop, cols]
        if out is None:
            return torch.add(bias, cross, alpha=alpha)
        return torch.add(bias, cross, alpha=alpha, out=out)

    def blocks(self) -> Iterator[tuple[int, int]]:
        n = self.x.shape[0]
        return ((s, min(n, s + self.rows)) for s in range(0, n, self.rows))

    def buffer(self) -> torch.Tensor:
        return torch.empty(self.rows, self.y.shape[0], dtype=self.x.dtype, device=self.x.device)


@dataclass(frozen=True, slots=True)
class Pass:
    f: torch.Tensor  # c-transform of the input g
    g_next: torch.Tensor  # g-update from f
    col_marginal: torch.Tensor  # float64 column marginal of (f, input g)


def check_pair(x: Rows, y: torch.Tensor, eps: float) -> tuple[int, int]:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError(f"x, y must be non-empty (n, d) and (m, d), got {tuple(x.shape)}, {tuple(y.shape)}")
    if x.dtype not in (torch.float32, torch.float64) or y.dtype != x.dtype:
        raise ValueError(f"x and y must both be float32 or both float64, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
    if not (isinstance(eps, float | int) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    return x.shape[0], y.shape[0]


def weights(w: torch.Tensor | None, size: int, like: Rows, name: str) -> torch.Tensor:
    """Probability weights of length ``size`` in ``like``'s dtype and device (uniform when None)."""
    if w is None:
        return torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)
    if w.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(w.shape)}")
    w64 = w.detach().to(device=like.device, dtype=torch.float64)
    if not bool(torch.isfinite(w64).all()) or not bool((w64 > 0).all()):
        raise ValueError(f"{name} must be positive and finite")
    return (w64 / w64.sum()).to(like.dtype)


def potential(v: torch.Tensor, size: int, like: Rows, name: str) -> torch.Tensor:
    if v.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(v.shape)}")
    out = v.detach().to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite")
    return out


def softmax_rows(
    geo: Geometry, start: int, h: torch.Tensor, eps: float, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out <- exp(S - max_j S)``, ``S = h + (2/eps) x y^T`` for one block; returns (LSE_j S, sum_j)."""
    geo.scaled_cross(h, start, start + out.shape[0], alpha=2.0 / eps, out=out)
    mx = out.amax(1, keepdim=True)
    out.sub_(mx).exp_()
    r = out.sum(1)
    return mx.squeeze(1) + r.log(), r


def fused_pass(
    geo: Geometry,
    g: torch.Tensor,
    *,
    eps: float,
    a_w: torch.Tensor,
    b_w: torch.Tensor,
    buf: torch.Tensor,
    on_block: Callable[[], None] | None = None,
) -> Pass:
    """One Sinkhorn pass: f = c(g) and the column marginal of (f, g), one GEMM per block.

    ``on_block()`` runs before each block; an exception it raises (a cancelled request) propagates.
    """
    h = b_w.log() + (g - geo.yn) / eps
    f = torch.empty_like(geo.xn)
    lse = torch.empty_like(geo.xn)
    col = torch.zeros(geo.y.shape[0], dtype=torch.float64, device=g.device)
    for start, stop in geo.blocks():
        if on_block is not None:
            on_block()
        e = buf[: stop - start]
        lse[start:stop], r = softmax_rows(geo, start, h, eps, e)
        col += col_sum(e, a_w[start:stop] / r)
    torch.sub(geo.xn, lse, alpha=eps, out=f)
    g_next = g - eps * (col / b_w.double()).log().to(g.dtype)
    bad = ~(col >= math.sqrt(torch.finfo(g.dtype).tiny))
    if bool(bad.any()):  # marginal underflow: redo those columns by a streaming logsumexp
        idx = bad.nonzero().squeeze(1)
        g_next[idx] = col_lse(geo, idx, a_w.log() - lse, eps)
    return Pass(f=f, g_next=g_next, col_marginal=col)


def col_sum(e: torch.Tensor, w: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """``e^T w`` in float64 from partial sums of ``chunk`` rows (one long ``mv`` loses ~1e-5 relative)."""
    full = e.shape[0] - e.shape[0] % chunk
    out = torch.mv(e[full:].T, w[full:]).double()
    if full:
        parts = torch.bmm(w[:full].view(-1, 1, chunk), e[:full].view(-1, chunk, e.shape[1]))
        out += parts.squeeze(1).sum(0, dtype=torch.float64)
    return out


def col_lse(geo: Geometry, cols: torch.Tensor, k: torch.Tensor, eps: float) -> torch.Tensor:
    """``yn_j - eps * LSE_i(k_i + (2/eps) x_i.y_j)`` for ``cols``, streamed with a running max per column."""
    run_max = torch.full((len(cols),), -math.inf, dtype=geo.y.dtype, device=geo.y.device)
    run_sum = torch.zeros_like(run_max)
    for start, stop in geo.blocks():
        t = geo.scaled_cross(k[start:stop, None], start, stop, alpha=2.0 / eps, cols=cols)
        new_max = torch.maximum(run_max, t.amax(0))
        run_sum = run_sum * (run_max - new_max).exp() + t.sub_(new_max).exp_().sum(0)
        run_max = new_max
    return geo.yn[cols] - eps * (run_max + run_sum.log())
