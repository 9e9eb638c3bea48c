"""The value of one stored sketch chunk: dense float16 rows (the first format) or sparse rows.

Two encodings share the ``sketches`` database, told apart by the value's length:

- *dense* (written by gotd before the sparse encoding, and still when it is not smaller): the chunk's
  rows as ``rows x width`` little-endian float16, row-major. Its length is always even;
- *sparse*, version 1: ``u32 rows``, ``u16 count[rows]`` (entries per row), ``u16 bucket[nnz]``,
  ``float16 value[nnz]`` (all little-endian, the entries row by row, buckets ascending), then one tag
  byte ``0x01``. Its length ``4 + 2 rows + 4 nnz + 1`` is always odd.

So every store written before keeps reading, chunk by chunk, and a chunk rewritten by an upsert is
re-encoded sparse. Both decode to the same dense float16 rows, bit for bit (the sparse entries are the
non-zero bit patterns, :class:`gotd.cache.sketch_rows.SparseRows`). A sparse chunk of 256 rows of
1,024 buckets with about 100 entries a row takes ~100 KiB instead of 512 KiB. Widths over 65,535
buckets (more than a ``u16`` holds) and chunks whose sparse form is not smaller are written dense.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

from gotd.cache.sketch_rows import SKETCH_DTYPE, SparseRows, indptr_of

__all__ = [
    "chunk_length",
    "decode_chunk",
    "decode_into",
    "decode_rows",
    "decode_sparse",
    "encode_chunk",
    "entry_counts",
    "fill_entries",
    "sparse_rows_of",
]

SPARSE_V1: Final = 1
_U32 = struct.Struct("<I")
_MAX_WIDTH = 0xFFFF


def encode_chunk(rows: SparseRows) -> bytes:
    """The stored value of a chunk holding ``rows``: sparse when that is smaller, else dense."""
    n, nnz = len(rows), len(rows.values)
    if rows.width > _MAX_WIDTH or _U32.size + 2 * n + 4 * nnz + 1 >= 2 * n * rows.width:
        return rows.dense().tobytes()
    return b"".join(
        (
            _U32.pack(n),
            rows.counts().astype("<u2").tobytes(),
            rows.indices.astype("<u2").tobytes(),
            np.ascontiguousarray(rows.values, dtype=SKETCH_DTYPE).tobytes(),
            bytes((SPARSE_V1,)),
        )
    )


def _sparse_parts(raw: bytes | memoryview, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(counts, buckets, values)`` of a sparse chunk (views of ``raw``), checked."""
    size = len(raw)
    if raw[size - 1] != SPARSE_V1 or size < _U32.size + 1:
        raise ValueError(f"a sketch chunk of unknown encoding (tag {raw[size - 1]}, {size} bytes)")
    (n,) = _U32.unpack_from(raw)
    counts = np.frombuffer(raw, dtype="<u2", count=n, offset=_U32.size) if n else np.zeros(0, "<u2")
    nnz = int(counts.sum(dtype=np.int64))
    if _U32.size + 2 * n + 4 * nnz + 1 != size:
        raise ValueError(f"a sparse sketch chunk of {size} bytes does not hold its {n} rows")
    at = _U32.size + 2 * n
    buckets = np.frombuffer(raw, dtype="<u2", count=nnz, offset=at)
    values = np.frombuffer(raw, dtype=SKETCH_DTYPE, count=nnz, offset=at + 2 * nnz)
    if nnz and int(buckets.max()) >= width:
        raise ValueError(f"a sparse sketch chunk has a bucket past the width {width}")
    return counts, buckets, values


def chunk_length(raw: bytes | memoryview, width: int) -> int:
    """Rows held by a chunk value.

    Raises
    ------
    ValueError
        A dense value with a partial row, or a sparse value that is not well formed.
    """
    size = len(raw)
    if size % 2 == 0:
        if size % (width * SKETCH_DTYPE.itemsize):
            raise ValueError("a dense sketch chunk has a partial row")
        return size // (width * SKETCH_DTYPE.itemsize)
    return len(_sparse_parts(raw, width)[0])


def decode_into(raw: bytes | memoryview, width: int, out: np.ndarray) -> None:
    """Write the rows of a chunk into ``out``, C-contiguous float16 zeros of ``(chunk_length, width)``."""
    if len(raw) % 2 == 0:
        out[:] = np.frombuffer(raw, dtype=SKETCH_DTYPE).reshape(-1, width)
        return
    _sparse_view(raw, width).fill(out)


def decode_chunk(raw: bytes | memoryview, width: int) -> np.ndarray:
    """The ``(rows, width)`` float16 rows of a chunk value (a new array)."""
    out = np.zeros((chunk_length(raw, width), width), dtype=SKETCH_DTYPE)
    decode_into(raw, width, out)
    return out


def decode_sparse(raw: bytes | memoryview, width: int) -> SparseRows:
    """The rows of a chunk value as :class:`SparseRows` (copies: the value's pages can go)."""
    if len(raw) % 2 == 0:
        return SparseRows.from_dense(decode_chunk(raw, width))
    view = _sparse_view(raw, width)
    return SparseRows(width, view.indptr, view.indices.astype(np.int64), view.values.copy())


def decode_rows(raw: bytes | memoryview, width: int, local: np.ndarray) -> np.ndarray:
    """The ``(len(local), width)`` float16 rows ``local`` of a chunk value (each below its length),
    decoding those rows alone."""
    if len(raw) % 2 == 0:
        picked: np.ndarray = np.frombuffer(raw, dtype=SKETCH_DTYPE).reshape(-1, width)[local]
        return picked
    return _sparse_view(raw, width).take(local).dense()


def entry_counts(raw: bytes | memoryview, width: int) -> np.ndarray:
    """Entries (non-zero bit patterns) per row of a chunk value (int64), without decoding its entries
    when it is sparse (the count header)."""
    if len(raw) % 2 == 0:
        bits = np.frombuffer(raw, dtype="<u2").reshape(-1, width)
        dense: np.ndarray = np.count_nonzero(bits, axis=1).astype(np.int64)
        return dense
    return _sparse_parts(raw, width)[0].astype(np.int64)


def fill_entries(raw: bytes | memoryview, width: int, indices: np.ndarray, values: np.ndarray) -> None:
    """Write the entries of a chunk value, row by row, into ``indices`` and ``values`` (each of
    ``entry_counts(raw).sum()`` items; the buckets cast to ``indices``' type)."""
    if len(raw) % 2 == 0:
        rows = SparseRows.from_dense(np.frombuffer(raw, dtype=SKETCH_DTYPE).reshape(-1, width))
        buckets, found = rows.indices, rows.values
    else:
        _counts, buckets, found = _sparse_parts(raw, width)
    indices[:] = buckets
    values[:] = found


def sparse_rows_of(raw: bytes | memoryview, width: int, local: np.ndarray | None = None) -> SparseRows:
    """The rows of a chunk value (``local``: those rows, sorted, zero rows for those past its length)
    as compact :class:`SparseRows` (:meth:`SparseRows.compact`; copies, the value's pages can go)."""
    if len(raw) % 2 == 0:
        dense = np.frombuffer(raw, dtype=SKETCH_DTYPE).reshape(-1, width)
        rows = SparseRows.from_dense(dense if local is None else dense[local[local < len(dense)]])
    else:
        view = _sparse_view(raw, width)
        rows = view if local is None else view.take(local[local < len(view)])
    missing = 0 if local is None else len(local) - len(rows)
    if missing:
        rows = SparseRows.concat([rows, SparseRows.zeros(missing, width)], width)
    compact = rows.compact()
    if compact.values.base is not None or compact.indices.base is not None:  # views of raw: copy them
        return SparseRows(width, compact.indptr.copy(), compact.indices.copy(), compact.values.copy())
    return compact


def _sparse_view(raw: bytes | memoryview, width: int) -> SparseRows:
    """The rows of a sparse chunk value, their buckets and values views of ``raw`` (uint16 buckets)."""
    counts, buckets, values = _sparse_parts(raw, width)
    return SparseRows(width, indptr_of(counts), buckets, values)
