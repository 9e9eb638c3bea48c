"""The column groups of :class:`gotd.server.ot.rows.StackedRows`: stored rows, dense (:class:`Part`) or
in compressed sparse row form (:class:`SparsePart`), with their factors, each computing its share of a
cross product block in float32.

Pure torch, no state; tensors in, frozen dataclasses out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AnyPart", "Part", "SparsePart"]

_COMPUTE = torch.float32
#: Stored rows upcast to float32 at a time for a dense part's GEMMs: whole GEMM quanta
#: (``gotd.server.ot.sinkhorn.GEMM_ROW_QUANTUM``), so a row's products keep their bits. A 16k-row
#: block of cost at d = 384 then needs 6 MiB of float32 rows, not 24 MiB; measured on 1M x 1k
#: (float16, quiet, 2 cores): the c-transform 5.56 s whole, 5.61 s in these slices.
UPCAST_ROWS = 4096
#: No slice of a block is shorter than a GEMM of ``gotd.server.ot.sinkhorn.MIN_GEMM_ROWS`` rows.
MIN_SLICE_ROWS = 512


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

    def span(self, start: int, stop: int) -> Part:
        """Rows ``start:stop`` as a copy that owns its memory."""
        rows = None if self.rows is None else self.rows[start:stop].clone()
        return Part(self.data[start:stop].clone(), self.weight, self.columns, rows)

    @property
    def n(self) -> int:
        """Rows."""
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.data.shape[1])

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        """Bytes held: the stored rows and the per-row factors."""
        return _nbytes(self.data, self.rows)

    def addmm(
        self,
        bias: torch.Tensor,
        start: int,
        stop: int,
        y: torch.Tensor,
        alpha: float,
        out: torch.Tensor | None,
    ) -> torch.Tensor:
        """``bias + alpha * rows[start:stop] @ y.T`` (into ``out`` when given), ``UPCAST_ROWS`` rows
        upcast at a time."""
        if stop - start < UPCAST_ROWS + MIN_SLICE_ROWS:
            if out is None:
                return torch.addmm(bias, self.scaled(start, stop), y.T, alpha=alpha)
            return torch.addmm(bias, self.scaled(start, stop), y.T, alpha=alpha, out=out)
        if out is None:
            out = torch.empty((stop - start, y.shape[0]), dtype=_COMPUTE, device=self.device)
        per_row = bias.ndim == 2 and bias.shape[0] != 1
        for lo, hi in _slices(start, stop):
            b = bias[lo - start : hi - start] if per_row else bias
            torch.addmm(b, self.scaled(lo, hi), y.T, alpha=alpha, out=out[lo - start : hi - start])
        return out

    def add_to(self, acc: torch.Tensor, start: int, stop: int, y: torch.Tensor, alpha: float) -> None:
        """``acc += alpha * rows[start:stop] @ y.T``, ``UPCAST_ROWS`` rows upcast at a time."""
        for lo, hi in _slices(start, stop):
            acc[lo - start : hi - start].addmm_(self.scaled(lo, hi), y.T, alpha=alpha)

    def sq_norms(self, start: int, stop: int) -> torch.Tensor:
        """Squared L2 norms of rows ``start:stop`` with every factor applied, float32."""
        norms: torch.Tensor = torch.linalg.vector_norm(self.dense(start, stop), dim=1)
        return norms.square_()

    def target_side(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with this part's constant and column factors folded in: ``X_part . y = scaled . y'``."""
        out = y.to(_COMPUTE) * self.weight
        return out if self.columns is None else out.mul_(self.columns)


@dataclass(frozen=True, slots=True)
class SparsePart:
    """A :class:`Part` whose stored rows are in compressed sparse row (CSR) form.

    Row ``i``'s stored entries are ``values[indptr[i]:indptr[i + 1]]`` in the columns
    ``indices[indptr[i]:indptr[i + 1]]``; every other column is zero. The factors are those of
    :class:`Part`.

    Attributes
    ----------
    indptr : torch.Tensor, shape (n + 1,), int64
        Row pointers, ``indptr[0] == 0``, non-decreasing.
    indices : torch.Tensor, shape (nnz,), int16, int32 or int64
        Column of each entry, in ``[0, width)``; no column twice in a row.
    values : torch.Tensor, shape (nnz,)
        Value of each entry (float16, float32 or float64), never modified.
    width : int
        Columns ``d``.
    weight, columns, rows
        As in :class:`Part`.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    width: int
    weight: float = 1.0
    columns: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr.dtype != torch.int64:
            raise ValueError("indptr must be a 1-D int64 tensor of n + 1 row pointers")
        nnz = len(self.values)
        if self.indices.shape != (nnz,) or self.values.ndim != 1:
            raise ValueError("indices and values must be 1-D with one entry each")
        if int(self.indptr[0]) != 0 or int(self.indptr[-1]) != nnz:
            raise ValueError(f"indptr must run from 0 to the {nnz} entries")
        if self.indices.dtype not in (torch.int16, torch.int32, torch.int64):
            raise ValueError(f"indices must be int16, int32 or int64, got {self.indices.dtype}")
        if self.columns is not None and tuple(self.columns.shape) != (self.width,):
            raise ValueError(f"columns must have shape ({self.width},), got {tuple(self.columns.shape)}")
        if self.rows is not None and tuple(self.rows.shape) != (self.n,):
            raise ValueError(f"rows must have shape ({self.n},), got {tuple(self.rows.shape)}")

    @property
    def n(self) -> int:
        """Rows."""
        return len(self.indptr) - 1

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        """Bytes held: the CSR arrays and the per-row factors."""
        return _nbytes(self.indptr, self.rows) + _nbytes(self.indices, self.values)

    def _entries(
        self, start: int, stop: int, *, row_factor: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(columns int64, values float32 with the per-row factor applied unless not ``row_factor``,
        offsets (stop - start + 1))`` of the entries of rows ``start:stop``."""
        ptr = self.indptr[start : stop + 1]
        lo, hi = int(ptr[0]), int(ptr[-1])
        values = self.values[lo:hi].to(_COMPUTE, copy=True)
        if row_factor and self.rows is not None:
            values.mul_(torch.repeat_interleave(self.rows[start:stop], ptr.diff()))
        return self.indices[lo:hi].to(torch.int64), values, ptr - lo

    def _row_of_entries(self, offsets: torch.Tensor) -> torch.Tensor:
        counts = offsets.diff()
        return torch.repeat_interleave(torch.arange(len(counts), device=offsets.device), counts)

    def scaled(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` densified in float32 with the per-row factor applied (a new tensor)."""
        cols, values, offsets = self._entries(start, stop)
        out = torch.zeros((stop - start, self.width), dtype=_COMPUTE, device=self.device)
        flat = self._row_of_entries(offsets).mul_(self.width).add_(cols)  # a row names a column once
        out.view(-1).index_copy_(0, flat, values)
        return out

    def dense(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` with every factor applied, float32."""
        out = self.scaled(start, stop)
        if self.columns is not None:
            out.mul_(self.columns)
        return out if self.weight == 1.0 else out.mul_(self.weight)

    def take(self, index: torch.Tensor) -> SparsePart:
        """The rows ``index`` (any order, repeats allowed; a copy in the stored dtypes)."""
        index = index.to(torch.int64)
        counts = self.indptr.diff()[index]
        indptr = torch.zeros(len(index) + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts, 0, out=indptr[1:])
        owner = torch.repeat_interleave(torch.arange(len(index), device=self.device), counts)
        picked = self.indptr[index][owner] + (
            torch.arange(int(indptr[-1]), device=self.device) - indptr[owner]
        )
        rows = None if self.rows is None else self.rows[index]
        return SparsePart(
            indptr, self.indices[picked], self.values[picked], self.width, self.weight, self.columns, rows
        )

    def span(self, start: int, stop: int) -> SparsePart:
        """Rows ``start:stop`` as a copy that owns its memory."""
        ptr = self.indptr[start : stop + 1]
        lo, hi = int(ptr[0]), int(ptr[-1])
        rows = None if self.rows is None else self.rows[start:stop].clone()
        return SparsePart(
            ptr - lo,
            self.indices[lo:hi].clone(),
            self.values[lo:hi].clone(),
            self.width,
            self.weight,
            self.columns,
            rows,
        )

    def target_side(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with the constant and column factors folded in, laid out column-major (its transpose
        contiguous: the table :meth:`add_to` sums rows of)."""
        out = y.to(_COMPUTE) * self.weight
        if self.columns is not None:
            out.mul_(self.columns)
        return out.T.contiguous().T

    def _products(
        self, start: int, stop: int, y: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``rows[start:stop] @ y.T`` (float32): per row, the entries' target columns summed (written
        into ``out`` when given: no block-sized temporary)."""
        cols, values, offsets = self._entries(start, stop)
        table = y.T.contiguous()  # a no-op for target_side's layout
        if out is None or not out.is_contiguous():
            return torch.nn.functional.embedding_bag(
                cols, table, offsets, mode="sum", per_sample_weights=values, include_last_offset=True
            )
        scratch = [torch.empty(0, dtype=torch.int64, device=out.device) for _ in range(3)]
        # the out= form of what embedding_bag runs without autograd (sum mode: 0)
        torch.ops.aten._embedding_bag_forward_only.out(
            table,
            cols,
            offsets,
            False,
            0,
            False,
            values,
            True,
            -1,
            out0=out,
            out1=scratch[0],
            out2=scratch[1],
            out3=scratch[2],
        )
        return out

    def addmm(
        self,
        bias: torch.Tensor,
        start: int,
        stop: int,
        y: torch.Tensor,
        alpha: float,
        out: torch.Tensor | None,
    ) -> torch.Tensor:
        """``bias + alpha * rows[start:stop] @ y.T`` (into ``out`` when given)."""
        products = self._products(start, stop, y, out)  # a new tensor unless written into ``out``
        if out is not None and products.data_ptr() != out.data_ptr():
            out.copy_(products)
            products = out
        return products.mul_(alpha).add_(bias)  # the same operations on every path

    def add_to(self, acc: torch.Tensor, start: int, stop: int, y: torch.Tensor, alpha: float) -> None:
        """``acc += alpha * rows[start:stop] @ y.T``."""
        acc.add_(self._products(start, stop, y), alpha=alpha)

    def sq_norms(self, start: int, stop: int) -> torch.Tensor:
        """Squared L2 norms of rows ``start:stop`` with every factor applied, float32: per row, the sum
        of its squared entries weighted by the squared column factors (an ``embedding_bag`` sum over a
        one-column table), times the squared per-row factor."""
        cols, values, offsets = self._entries(start, stop, row_factor=False)  # applied to the sums
        table = torch.full((self.width, 1), self.weight * self.weight, dtype=_COMPUTE, device=self.device)
        if self.columns is not None:
            table.mul_(self.columns.to(_COMPUTE).square()[:, None])
        sums = torch.nn.functional.embedding_bag(
            cols, table, offsets, mode="sum", per_sample_weights=values.square_(), include_last_offset=True
        )
        out = sums[:, 0]
        return out if self.rows is None else out.mul_(self.rows[start:stop].to(_COMPUTE).square())


AnyPart = Part | SparsePart
"""A column group of :class:`StackedRows`: dense or sparse stored rows."""


def _slices(start: int, stop: int) -> list[tuple[int, int]]:
    """``start:stop`` in slices of ``UPCAST_ROWS``, the last taking a rest under ``MIN_SLICE_ROWS``."""
    out, lo = [], start
    while stop - lo >= UPCAST_ROWS + MIN_SLICE_ROWS:
        out.append((lo, lo + UPCAST_ROWS))
        lo += UPCAST_ROWS
    out.append((lo, stop))
    return out


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(0 if t is None else t.numel() * t.element_size() for t in tensors)
