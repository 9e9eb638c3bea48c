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

Pure torch, no state; tensors in, frozen dataclasses out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Part",
    "Rows",
    "StackedRows",
    "addmm_rows",
    "block",
    "rows_of",
    "sq_norms",
    "take",
    "target_parts",
]

_COMPUTE = torch.float32
_NORM_ROWS = 1 << 15


@dataclass(frozen=True, slots=True)
class Part:
    """One column group of :class:`StackedRows`: stored rows and their factors.

    Attributes
    ----------
    data : torch.Tensor, shape (n, d)
        Stored rows (float16, float32 or float64), never modified.
    weight : float
        Constant factor ``c``.
    columns : torch.Tensor, shape (d,), optional
        Per-column factor ``u`` (float32).
    rows : torch.Tensor, shape (n,), optional
        Per-row factor ``r`` (float32).
    """

    data: torch.Tensor
    weight: float = 1.0
    columns: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n, d = self.data.shape
        if self.columns is not None and tuple(self.columns.shape) != (d,):
            raise ValueError(f"columns must have shape ({d},), got {tuple(self.columns.shape)}")
        if self.rows is not None and tuple(self.rows.shape) != (n,):
            raise ValueError(f"rows must have shape ({n},), got {tuple(self.rows.shape)}")

    def scaled(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` upcast to float32 with the per-row factor applied (a new tensor)."""
        out = self.data[start:stop].to(_COMPUTE, copy=True)
        if self.rows is not None:
            out.mul_(self.rows[start:stop, None])
        return out

    def dense(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` with every factor applied, float32."""
        out = self.scaled(start, stop)
        if self.columns is not None:
            out.mul_(self.columns)
        return out if self.weight == 1.0 else out.mul_(self.weight)  # x * 1.0 is x

    def take(self, index: torch.Tensor) -> Part:
        """The rows ``index`` (a copy in the stored dtype)."""
        rows = None if self.rows is None else self.rows[index]
        return Part(self.data[index], self.weight, self.columns, rows)

    def target_side(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with this part's constant and column factors folded in: ``X_part . y = scaled . y'``."""
        out = y.to(_COMPUTE) * self.weight
        return out if self.columns is None else out.mul_(self.columns)


@dataclass(frozen=True, slots=True)
class StackedRows:
    """Rows made of :class:`Part` s side by side, float32 when read (see the module docstring)."""

    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("StackedRows needs at least one part")
        n = self.parts[0].data.shape[0]
        if any(p.data.ndim != 2 or p.data.shape[0] != n for p in self.parts):
            raise ValueError("every part must be 2-D with the same number of rows")
        if len({p.data.device for p in self.parts}) != 1:
            raise ValueError("every part must be on one device")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.parts[0].data.shape[0]), sum(int(p.data.shape[1]) for p in self.parts))

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> torch.dtype:
        """The dtype rows are read and multiplied in (float32)."""
        return _COMPUTE

    @property
    def device(self) -> torch.device:
        return self.parts[0].data.device

    def element_size(self) -> int:
        """Bytes of one element as read (float32), for block sizing."""
        return 4

    @property
    def nbytes(self) -> int:
        """Bytes held: the stored rows and the per-row factors."""
        total = 0
        for p in self.parts:
            total += p.data.numel() * p.data.element_size()
            total += 0 if p.rows is None else p.rows.numel() * p.rows.element_size()
        return total

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
        return StackedRows(
            tuple(
                Part(
                    p.data[start:stop].clone(),
                    p.weight,
                    p.columns,
                    None if p.rows is None else p.rows[start:stop].clone(),
                )
                for p in self.parts
            )
        )

    def against(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Targets split by part, factors folded in, for :func:`addmm_rows` (done once per geometry)."""
        if y.ndim != 2 or y.shape[1] != self.shape[1]:
            raise ValueError(f"y must have shape (m, {self.shape[1]}), got {tuple(y.shape)}")
        out, at = [], 0
        for p in self.parts:
            d = int(p.data.shape[1])
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
        first, *rest = (torch.linalg.vector_norm(p.dense(start, stop), dim=1).square_() for p in x.parts)
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
    """``bias + alpha * x[start:stop] @ y.T``: one GEMM per part into one float32 accumulator.

    ``ys`` comes from :func:`target_parts` of the same ``x``.
    """
    if isinstance(x, torch.Tensor):
        if out is None:
            return torch.addmm(bias, x[start:stop], ys[0].T, alpha=alpha)
        return torch.addmm(bias, x[start:stop], ys[0].T, alpha=alpha, out=out)
    first, *rest = zip(x.parts, ys, strict=True)
    part, y = first
    if out is None:
        acc = torch.addmm(bias, part.scaled(start, stop), y.T, alpha=alpha)
    else:
        acc = torch.addmm(bias, part.scaled(start, stop), y.T, alpha=alpha, out=out)
    for part, y in rest:
        acc.addmm_(part.scaled(start, stop), y.T, alpha=alpha)
    return acc
