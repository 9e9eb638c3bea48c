r"""Pool rows kept in their stored, compact form and upcast to float32 one block at a time.

A :class:`StackedRows` is the matrix whose row ``i`` is the concatenation over its parts ``k`` of

.. math::

    c_k \, r_{k,i} \, (u_k \odot X_k[i]),

with ``X_k`` the stored rows of the part (float16 or float32), ``c_k`` a constant, ``r_{k,i}`` an
optional per-row factor and ``u_k`` an optional per-column factor. The fused cost's rows
``(sqrt(w) e, sqrt(1 - w) s)`` are two parts: the embeddings ``e`` (``c = sqrt(w)``) and the stored
term frequencies (``c = sqrt(1 - w)``, ``u`` the pool's IDF weights, ``r`` the inverse norms of the
IDF-weighted rows), so no float32 copy of the fused pool is ever built. A cross product block
:math:`X Y^\top` is the sum of one GEMM per part (the column factors and constants folded once into
the targets, :meth:`StackedRows.against`), accumulated in float32 in one output buffer.

A part whose rows are mostly zeros (the term frequencies: about 100 of 1,024 buckets a row) is a
:class:`SparsePart`, kept in compressed sparse row form (4 bytes an entry in float16 with int16
buckets); its share of a cross product block is an ``embedding_bag`` sum of the (folded) target
columns its entries name, weighted by the entries' values: about a quarter of the time of the dense
GEMM on 90 entries of 1,024 (the same products, summed in another order: float rounding apart).

Pure torch, no state; tensors in, frozen dataclasses out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gotd.server.ot.parts import AnyPart, Part, SparsePart

__all__ = [
    "Part",
    "Rows",
    "SparsePart",
    "StackedRows",
    "addmm_rows",
    "block",
    "rows_of",
    "sq_norms",
    "take",
    "target_parts",
]

_COMPUTE = torch.float32
_NORM_ROWS = 1 << 12  # a float32 block of 6 MiB at d = 384 (32k rows made a 48 MiB spike at 1M rows)


@dataclass(frozen=True, slots=True)
class StackedRows:
    """Rows made of parts (:class:`Part`, :class:`SparsePart`) side by side, float32 when read (see
    the module docstring)."""

    parts: tuple[AnyPart, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("StackedRows needs at least one part")
        n = self.parts[0].n
        if any((isinstance(p, Part) and p.data.ndim != 2) or p.n != n for p in self.parts):
            raise ValueError("every part must be 2-D with the same number of rows")
        if len({p.device for p in self.parts}) != 1:
            raise ValueError("every part must be on one device")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.parts[0].n, sum(p.width for p in self.parts))

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> torch.dtype:
        """The dtype rows are read and multiplied in (float32)."""
        return _COMPUTE

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def element_size(self) -> int:
        """Bytes of one element as read (float32), for block sizing."""
        return 4

    @property
    def nbytes(self) -> int:
        """Bytes held: the stored rows and the per-row factors."""
        return sum(p.nbytes for p in self.parts)

    def dense(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` materialised in float32 (a block, or a small subset)."""
        stop = self.shape[0] if stop is None else stop
        if len(self.parts) == 1:  # the part's own new tensor: no concatenating copy
            return self.parts[0].dense(start, stop)
        return torch.cat([p.dense(start, stop) for p in self.parts], 1)

    def take(self, index: torch.Tensor) -> StackedRows:
        """The rows ``index``, still compact."""
        return StackedRows(tuple(p.take(index) for p in self.parts))

    def span(self, start: int, stop: int) -> StackedRows:
        """Rows ``start:stop`` as a compact copy that owns its memory (to ship to another process)."""
        return StackedRows(tuple(p.span(start, stop) for p in self.parts))

    def against(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Targets split by part, factors folded in, for :func:`addmm_rows` (done once per geometry)."""
        if y.ndim != 2 or y.shape[1] != self.shape[1]:
            raise ValueError(f"y must have shape (m, {self.shape[1]}), got {tuple(y.shape)}")
        out, at = [], 0
        for p in self.parts:
            d = p.width
            out.append(p.target_side(y[:, at : at + d]))
            at += d
        return tuple(out)


Rows = torch.Tensor | StackedRows
"""Candidate rows: a dense tensor, or compact parts upcast per block."""


def block(x: Rows, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``x`` as a dense tensor (a view for a tensor)."""
    return x[start:stop] if isinstance(x, torch.Tensor) else x.dense(start, stop)


def rows_of(x: Rows, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``x`` as a dense tensor."""
    return x[index] if isinstance(x, torch.Tensor) else x.take(index).dense()


def take(x: Rows, index: torch.Tensor) -> Rows:
    """Rows ``index`` of ``x``, in the same form (compact rows stay compact)."""
    return x[index] if isinstance(x, torch.Tensor) else x.take(index)


def sq_norms(x: Rows) -> torch.Tensor:
    """Squared L2 norm of every row, in ``x.dtype``.

    Compact rows: blockwise, the sum over the parts of each part's float32 squared norm (no
    concatenated block of all the columns; one part gives the norms of the dense rows, bit for bit).
    """
    if isinstance(x, torch.Tensor):
        norms: torch.Tensor = torch.linalg.vector_norm(x, dim=1)  # fused: no (n, d) temporary
        return norms.square_()
    n = x.shape[0]
    out = torch.empty(n, dtype=_COMPUTE, device=x.device)
    for start in range(0, n, _NORM_ROWS):
        stop = min(n, start + _NORM_ROWS)
        first, *rest = (p.sq_norms(start, stop) for p in x.parts)
        for part in rest:
            first.add_(part)
        out[start:stop] = first
    return out


def target_parts(x: Rows, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``y`` as :func:`addmm_rows` multiplies it with ``x`` (itself for a tensor)."""
    return (y,) if isinstance(x, torch.Tensor) else x.against(y)


def addmm_rows(
    bias: torch.Tensor,
    x: Rows,
    start: int,
    stop: int,
    ys: tuple[torch.Tensor, ...],
    *,
    alpha: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``bias + alpha * x[start:stop] @ y.T``: one product per part (a GEMM, or an ``embedding_bag`` sum
    for a sparse part) into one float32 accumulator.

    ``ys`` comes from :func:`target_parts` of the same ``x``.
    """
    if isinstance(x, torch.Tensor):
        if out is None:
            return torch.addmm(bias, x[start:stop], ys[0].T, alpha=alpha)
        return torch.addmm(bias, x[start:stop], ys[0].T, alpha=alpha, out=out)
    # sparse parts first: the first part opens the accumulator, and a sparse part writes its sums
    # straight into it (a dense part's GEMM adds into it in place whatever its turn)
    first, *rest = sorted(zip(x.parts, ys, strict=True), key=lambda pair: not isinstance(pair[0], SparsePart))
    part, y = first
    acc = part.addmm(bias, start, stop, y, alpha, out)
    for part, y in rest:
        part.add_to(acc, start, stop, y, alpha)
    return acc
