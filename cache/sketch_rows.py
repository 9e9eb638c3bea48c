"""Sketch rows in compressed sparse row form: what the store writes and a sketch function may return.

A stored sketch row (:mod:`gotd.cache.store.sketch`) is ``width`` float16 values of which a text
touches only a few (about 100 of 1,024 buckets for a 40-word text). :class:`SparseRows` holds a batch
of such rows as CSR arrays: row ``i``'s non-zero values are ``values[indptr[i]:indptr[i + 1]]`` at the
buckets ``indices[indptr[i]:indptr[i + 1]]`` (ascending). "Non-zero" means a non-zero float16 bit
pattern, so :meth:`SparseRows.from_dense` and :meth:`SparseRows.dense` are exact inverses, bit for
bit, on any float16 rows (a ``-0.0`` is kept as a value).

It lives outside :mod:`gotd.cache.store` so that the sketch function of the server
(:func:`gotd.server.selection.sketches.tf_sparse`) can build it without importing the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["SKETCH_DTYPE", "SparseRows", "indptr_of", "magnitudes", "ranges"]

SKETCH_DTYPE = np.dtype("<f2")


def magnitudes(values: np.ndarray) -> np.ndarray:
    """The bits of float16 ``values`` but the sign (uint16): zero for ``0.0`` and ``-0.0``, at least
    ``0x7C00`` (the all-ones exponent) for infinities and NaN."""
    out: np.ndarray = np.asarray(values, dtype=SKETCH_DTYPE).view("<u2") & np.uint16(0x7FFF)
    return out


def indptr_of(counts: np.ndarray) -> np.ndarray:
    """CSR row pointers of rows holding ``counts`` entries: ``0, c0, c0 + c1, ...`` (int64, n + 1)."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def ranges(start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The indices ``start[i] + j`` for ``0 <= j < size[i]``, concatenated (int64)."""
    offset = indptr_of(size)[:-1]
    out: np.ndarray = np.arange(int(size.sum()), dtype=np.int64) + np.repeat(start - offset, size)
    return out


@dataclass(frozen=True)
class SparseRows:
    """``len(indptr) - 1`` sketch rows of ``width`` float16 values, in CSR form.

    Attributes
    ----------
    width : int
        Buckets per row.
    indptr : numpy.ndarray, shape (n + 1,), int64
        Row ``i``'s entries are ``indptr[i]:indptr[i + 1]``; ``indptr[0] == 0``.
    indices : numpy.ndarray, shape (nnz,), int64
        Bucket of each entry, ascending within a row, each in ``[0, width)`` (int16 or int32 in a
        pool snapshot's rows, :meth:`compact`).
    values : numpy.ndarray, shape (nnz,), float16
        Value of each entry (a non-zero bit pattern).
    """

    width: int
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, width)``, as of the dense array."""
        return len(self), self.width

    @classmethod
    def zeros(cls, n: int, width: int) -> SparseRows:
        """``n`` zero rows."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(width, np.zeros(n + 1, dtype=np.int64), empty, np.zeros(0, dtype=SKETCH_DTYPE))

    @classmethod
    def from_dense(cls, rows: np.ndarray) -> SparseRows:
        """The entries of a 2-d float16 array with a non-zero bit pattern."""
        bits = np.ascontiguousarray(rows, dtype=SKETCH_DTYPE).view("<u2")
        row, col = np.nonzero(bits)
        indptr = indptr_of(np.bincount(row, minlength=bits.shape[0]))
        return cls(int(bits.shape[1]), indptr, col.astype(np.int64), bits[row, col].view(SKETCH_DTYPE))

    @classmethod
    def concat(cls, parts: list[SparseRows], width: int) -> SparseRows:
        """The rows of ``parts``, one after the other (all of ``width`` buckets)."""
        if not parts:
            return cls.zeros(0, width)
        indptr = indptr_of(np.concatenate([np.diff(p.indptr) for p in parts]))
        indices = np.concatenate([p.indices for p in parts])
        return cls(width, indptr, indices, np.concatenate([p.values for p in parts]).astype(SKETCH_DTYPE))

    @property
    def nbytes(self) -> int:
        """Bytes of the three arrays."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.values.nbytes)

    def compact(self) -> SparseRows:
        """The same rows with the narrowest signed bucket type of the width (int16 up to 32,768 buckets,
        else int32; signed: what torch indexes with) and float16 values: about 4 bytes an entry."""
        kind = np.int16 if self.width <= 1 << 15 else np.int32
        return SparseRows(
            self.width,
            self.indptr.astype(np.int64, copy=False),
            self.indices.astype(kind, copy=False),
            self.values.astype(SKETCH_DTYPE, copy=False),
        )

    def blocks(self, size: int) -> Iterator[tuple[int, SparseRows]]:
        """``(start, rows start:start + size)`` over all rows (views, :meth:`rows`)."""
        for start in range(0, len(self), size):
            yield start, self.rows(start, min(len(self), start + size))

    def pick(self, which: slice | np.ndarray) -> SparseRows:
        """Rows ``which``: a slice of step 1 (views) or positions (a copy)."""
        if isinstance(which, slice):
            start, stop, step = which.indices(len(self))
            if step != 1:
                raise ValueError("sparse rows are sliced with step 1 only")
            return self.rows(start, max(start, stop))
        return self.take(np.asarray(which, dtype=np.int64))

    def replaced(self, positions: np.ndarray, new: SparseRows, n: int) -> SparseRows:
        """These rows extended with zero rows to ``n`` rows, then rows ``positions`` (sorted, unique,
        below ``n``) set to ``new``'s: a copy built from runs of unchanged rows (no index per entry)."""
        if len(new) != len(positions) or new.width != self.width or len(self) > n:
            raise ValueError("replaced: one new row per position, of the same width, within n rows")
        counts = np.zeros(n, dtype=np.int64)
        counts[: len(self)] = self.counts()
        counts[positions] = new.counts()
        indices: list[np.ndarray] = []
        values: list[np.ndarray] = []
        at = 0  # next old row to copy
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1 if len(positions) else np.zeros(0, np.int64)
        starts = np.concatenate([np.zeros(min(1, len(positions)), np.int64), breaks])
        ends = np.concatenate([breaks, np.full(min(1, len(positions)), len(positions), np.int64)])
        for first, last in zip(
            starts.tolist(), ends.tolist(), strict=True
        ):  # runs of consecutive positions: their new rows are consecutive too
            row = int(positions[first])
            if row > at and at < len(self):
                kept = self.rows(at, min(row, len(self)))
                indices.append(kept.indices)
                values.append(kept.values)
            lo, hi = int(new.indptr[first]), int(new.indptr[last])
            indices.append(new.indices[lo:hi])
            values.append(new.values[lo:hi])
            at = int(positions[last - 1]) + 1
        if at < len(self):
            kept = self.rows(at, len(self))
            indices.append(kept.indices)
            values.append(kept.values)
        kind = np.result_type(self.indices, new.indices)
        return SparseRows(
            self.width,
            indptr_of(counts),
            np.concatenate(indices).astype(kind, copy=False) if indices else np.zeros(0, kind),
            np.concatenate(values).astype(SKETCH_DTYPE, copy=False) if values else np.zeros(0, SKETCH_DTYPE),
        )

    def counts(self) -> np.ndarray:
        """Entries per row (int64)."""
        out: np.ndarray = np.diff(self.indptr)
        return out

    def row_any(self) -> np.ndarray:
        """Per row, whether it has a non-zero value (``dense().any(axis=1)``; a ``-0.0`` is zero)."""
        nonzero = magnitudes(self.values) != 0
        owner = np.repeat(np.arange(len(self), dtype=np.int64), self.counts())
        out = np.zeros(len(self), dtype=bool)
        out[owner[nonzero]] = True
        return out

    def any(self) -> bool:
        """Whether any row has a non-zero value."""
        return bool(magnitudes(self.values).any())

    def rows(self, start: int, stop: int) -> SparseRows:
        """Rows ``start:stop`` (views of the arrays but for the shifted ``indptr``)."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return SparseRows(
            self.width, self.indptr[start : stop + 1] - lo, self.indices[lo:hi], self.values[lo:hi]
        )

    def take(self, positions: np.ndarray) -> SparseRows:
        """Rows ``positions`` (any order, repeats allowed)."""
        counts = self.counts()[positions]
        picked = ranges(self.indptr[:-1][positions], counts)
        return SparseRows(self.width, indptr_of(counts), self.indices[picked], self.values[picked])

    def dense(self) -> np.ndarray:
        """The rows as a C-contiguous ``(n, width)`` float16 array."""
        out = np.zeros((len(self), self.width), dtype=SKETCH_DTYPE)
        self.fill(out)
        return out

    def fill(self, out: np.ndarray) -> None:
        """Write the entries into ``out``, a C-contiguous ``(n, width)`` float16 array of zeros."""
        if not out.flags.c_contiguous:
            raise ValueError("sketch rows fill a C-contiguous array only")
        flat = out.reshape(-1)  # a view: out is C-contiguous
        owner = np.repeat(np.arange(len(self), dtype=np.int64) * self.width, self.counts())
        flat[owner + self.indices] = self.values
