"""Stored n-gram sketches: per-pool float16 row chunks, and the target-set value with its sketch block.

A *sketch* is one dense row of ``buckets`` float16 values per candidate or target (the hashed n-gram
term frequencies of its text), computed once when the record is written by a function the caller hands
to the store (the server passes ``gotd.server.selection.sketches.tf_sparse``; ``gotd.cache`` never imports
``gotd.server``). A zero row means "no sketch" (no text, or written without a sketch function).

Layout (``P`` is the pool's number, as in :mod:`gotd.cache.store.layout`)::

    sketches  P + u64 chunk -> up to sketch_rows rows of sketch_buckets float16 values, dense or sparse
                              (:mod:`gotd.cache.store.sketch_codec`)
    targets   target-set name -> u32 len(header) + JSON header + u32 len(ids) + JSON ids
              + float32 vectors [+ float16 sketches when the header has "sketch_buckets"]

A pool's record carries ``sketch_buckets`` (0: the pool keeps no sketches, e.g. it was written by an
older gotd) and ``sketch_rows``, its own rows per chunk (``chunk_rows_for(sketch_buckets, "float16")``:
256 rows of 1024 buckets, 512 KiB), independent of the vector chunking so that a low-dimensional pool
does not rewrite multi-megabyte sketch chunks on every small upsert. Chunks are sparse: an absent chunk,
or the rows past the end of a short one, are zero rows, so a vector-only pool stores no sketch bytes.
Sketch chunks are written in the same write transaction as the vectors, sparse (a chunk of a dense
store is re-encoded when an upsert rewrites it); a snapshot keeps them sparse
(:meth:`~gotd.cache.sketch_rows.SparseRows.compact`: about 4 bytes per non-zero value in memory).
A sketch function may return the rows dense or as :class:`~gotd.cache.sketch_rows.SparseRows`, which
the store then encodes without ever building the dense rows.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

import lmdb
import numpy as np

from gotd.cache.sketch_rows import SKETCH_DTYPE, SparseRows, indptr_of, magnitudes
from gotd.cache.store.layout import PoolRecord, TargetSetInfo, chunk_parts, pool_chunks, u64_key
from gotd.cache.store.pages import release
from gotd.cache.store.sketch_codec import (
    chunk_length,
    decode_sparse,
    encode_chunk,
    entry_counts,
    fill_entries,
    sparse_rows_of,
)

__all__ = [
    "SKETCH_DB",
    "SKETCH_DTYPE",
    "Sketcher",
    "backfill_marker",
    "batch_sketches",
    "decode_target_set",
    "decode_target_sketches",
    "encode_target_set",
    "grown_sketches",
    "load_sketches",
    "sketch_matrix",
    "sketch_rows",
    "write_sketch_rows",
]

LOG = logging.getLogger(__name__)

SKETCH_DB: Final = "sketches"
_U32 = struct.Struct("<I")

Sketcher = Callable[[Sequence[str | None]], np.ndarray | SparseRows]
"""Texts -> sketch rows, shape ``(len(texts), buckets)``, dense or sparse; a zero row for a None or
empty text."""


def backfill_marker(prefix: bytes) -> bytes:
    """``meta`` key present while a sketch backfill of the pool ``prefix`` has written rows without
    bumping the pool version yet (:mod:`gotd.cache.store.backfill`)."""
    return b"sketch_backfill/" + prefix


def sketch_rows(sketcher: Sketcher, texts: Sequence[str | None]) -> SparseRows:
    """``sketcher(texts)`` checked, as :class:`SparseRows` (dense rows are converted).

    Raises
    ------
    ValueError
        When the sketch function returns another shape or non-finite values (a programming error).
    """
    got = sketcher(texts)
    rows = got if isinstance(got, SparseRows) else SparseRows.from_dense(_dense_rows(got))
    if len(rows) != len(texts) or rows.width < 1:
        raise ValueError(f"the sketch function returned shape {rows.shape} for {len(texts)} texts")
    _check_finite(rows.values)
    return rows


def sketch_matrix(sketcher: Sketcher, texts: Sequence[str | None]) -> np.ndarray:
    """``sketcher(texts)`` checked and converted to a C-contiguous little-endian float16 array.

    Raises
    ------
    ValueError
        When the sketch function returns another shape or non-finite values (a programming error).
    """
    got = sketcher(texts)
    rows = got.dense() if isinstance(got, SparseRows) else _dense_rows(got)
    if rows.shape[0] != len(texts) or rows.shape[1] < 1:
        raise ValueError(f"the sketch function returned shape {rows.shape} for {len(texts)} texts")
    _check_finite(rows)
    return rows


def _dense_rows(rows: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(rows, dtype=SKETCH_DTYPE)
    if out.ndim != 2:
        raise ValueError(f"the sketch function returned shape {out.shape}")
    return out


def _check_finite(values: np.ndarray) -> None:
    if values.size and int(magnitudes(values).max()) >= 0x7C00:  # all-ones exponent
        raise ValueError("the sketch function returned non-finite values")


def batch_sketches(sketcher: Sketcher | None, texts: Sequence[str | None]) -> tuple[SparseRows | None, int]:
    """``(rows, width)`` of an upsert batch: :func:`sketch_rows` of its texts and their width; rows
    None (all zero rows) when no record has a text or there is no sketch function (width 0)."""
    if sketcher is None:
        return None, 0
    if any(texts):
        rows = sketch_rows(sketcher, texts)
        return rows, rows.width
    return None, sketch_rows(sketcher, [None]).width  # the function is still checked


# -- pool chunks -----------------------------------------------------------------------------------


def write_sketch_rows(
    txn: lmdb.Transaction,
    db: lmdb._Database,
    pool: PoolRecord,
    rows: np.ndarray,
    values: SparseRows | None,
) -> SparseRows:
    """Set the sketches of pool rows ``rows`` (sorted ascending) to ``values`` (None: zero rows); the
    rows' previous sketches (zero rows where there were none), for the pool's sketch statistics.

    Parameters
    ----------
    txn : lmdb.Transaction
        The upsert's write transaction.
    db : lmdb._Database
        The ``sketches`` database.
    pool : PoolRecord
        The pool, with ``sketch_buckets > 0``.
    rows : numpy.ndarray
        Pool rows, int64, sorted ascending.
    values : SparseRows or None
        ``len(rows)`` rows of ``pool.sketch_buckets``.
    """
    size, width = pool.sketch_rows, pool.sketch_buckets
    before: list[SparseRows] = []  # per chunk part, in the order of rows
    for chunk, part, local in chunk_parts(rows, size):
        new = None if values is None else values.rows(int(part[0]), int(part[-1]) + 1)  # a run of positions
        key = u64_key(pool.prefix, chunk)
        raw = txn.get(key, db=db)
        if raw is None and (new is None or not new.any() or local[-1] == len(local) - 1):
            before.append(SparseRows.zeros(len(local), width))
            if new is not None and new.any():  # a new chunk's first rows
                txn.put(key, encode_chunk(new), db=db)
            continue  # else an absent chunk already reads as zero rows
        old = SparseRows.zeros(0, width) if raw is None else decode_sparse(raw, width)
        new = SparseRows.zeros(len(local), width) if new is None else new
        both = SparseRows.concat([old, new, SparseRows.zeros(1, width)], width)
        before.append(both.take(np.where(local < len(old), local, len(old) + len(new))))
        source = np.full(max(len(old), int(local.max()) + 1), len(old) + len(new), dtype=np.int64)
        source[: len(old)] = np.arange(len(old))  # the old rows, the new rows at local, zero rows between
        source[local] = len(old) + np.arange(len(new))
        txn.put(key, encode_chunk(both.take(source)), db=db)
    return SparseRows.concat(before, width)


def load_sketches(txn: lmdb.Transaction, db: lmdb._Database | None, pool: PoolRecord) -> SparseRows | None:
    """The ``count`` sketch rows of ``pool`` (compact sparse rows), or None when it keeps none.

    Two passes over the chunks of the memory map: the entries per row (from the sparse chunks'
    headers), then the entries copied straight into arrays of their final size (no second copy).
    A pool without sketches (``sketch_buckets == 0``, or a store opened read-only that has no
    ``sketches`` database) gives None, and so does a pool that stores no sketch chunk (every row a
    zero row: records sent as embeddings without text), which then costs no array and no growth work
    (:func:`grown_sketches`), and a chunk that does not fit the pool (logged: the sketches are an
    optional input, never a reason to fail a load).
    """
    n, width, size = pool.count, pool.sketch_buckets, pool.sketch_rows
    if db is None or width < 1 or size < 1:
        return None
    counts = np.zeros(n, dtype=np.int64)
    found = False
    for chunk, value in pool_chunks(txn, db, pool.prefix):  # the entries per row first (chunk headers)
        start = chunk * size
        try:
            length = chunk_length(value, width)
        except ValueError as err:
            LOG.warning("pool %r: %s; loading without sketches", pool.name, err)
            return None
        if length > size or start + length > n:
            LOG.warning("pool %r: a sketch chunk lies past the pool's rows; loading without", pool.name)
            return None
        counts[start : start + length] = entry_counts(value, width)
        found = True
    if not found:
        return None
    empty = SparseRows.zeros(0, width).compact()  # the compact types
    indptr = indptr_of(counts)
    indices = np.empty(int(indptr[-1]), dtype=empty.indices.dtype)
    values = np.empty(int(indptr[-1]), dtype=SKETCH_DTYPE)
    for chunk, value in pool_chunks(txn, db, pool.prefix):  # then the entries, straight into place
        start = chunk * size
        stop = min(n, start + size)
        lo, hi = int(indptr[start]), int(indptr[stop])
        fill_entries(value, width, indices[lo:hi], values[lo:hi])
    return SparseRows(width, indptr, indices, values)


def grown_sketches(
    txn: lmdb.Transaction,
    db: lmdb._Database | None,
    pool: PoolRecord,
    base: SparseRows | None,
    rows: np.ndarray,
) -> SparseRows | None:
    """The sketches of ``pool`` from ``base``, those of an earlier version of it (None: it had no
    sketch row), with the sorted ``rows`` written since read again; None when the pool keeps no
    sketches or still has no sketch row. A copy of ``base``'s entries with those rows replaced
    (:meth:`SparseRows.replaced`)."""
    width, size = pool.sketch_buckets, pool.sketch_rows
    if db is None or width < 1 or size < 1 or (base is not None and base.width != width):
        return None
    parts: list[SparseRows] = []
    for chunk, _part, local in chunk_parts(rows, size):
        raw = txn.get(u64_key(pool.prefix, chunk), db=db)
        if raw is None:  # an absent chunk: zero rows
            parts.append(SparseRows.zeros(len(local), width).compact())
            continue
        parts.append(sparse_rows_of(raw, width, local))
        release(raw)  # decoded into a copy: the chunk's pages can go
    new = SparseRows.concat(parts, width).compact()
    if base is None:
        if not new.any():
            return None
        base = SparseRows.zeros(0, width).compact()
    return base.replaced(np.asarray(rows, dtype=np.int64), new, pool.count)


# -- target sets -----------------------------------------------------------------------------------


def encode_target_set(
    info: TargetSetInfo, ids: list[str], vectors: np.ndarray, sketches: np.ndarray | None = None
) -> bytes:
    """The ``targets`` value: header, ids, float32 vectors and, when given, the float16 sketch rows."""
    head: dict[str, Any] = {
        "count": info.count,
        "model": info.model,
        "dim": info.dim,
        "content_hash": info.content_hash,
        "created": info.created,
    }
    tail = b""
    if sketches is not None:
        if sketches.ndim != 2 or sketches.shape[0] != info.count:
            raise ValueError(f"target sketches must have {info.count} rows, got shape {sketches.shape}")
        head["sketch_buckets"] = int(sketches.shape[1])
        tail = np.ascontiguousarray(sketches, dtype=SKETCH_DTYPE).tobytes()
    header = json.dumps(head).encode()
    id_blob = json.dumps(ids, ensure_ascii=False).encode("utf-8")
    return (
        _U32.pack(len(header))
        + header
        + _U32.pack(len(id_blob))
        + id_blob
        + np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        + tail
    )


def _parse(raw: bytes | memoryview) -> tuple[dict[str, Any], bytes, int, int]:
    """``(header, data, offset of the ids' length, offset of the vectors)`` of a ``targets`` value."""
    data = bytes(raw)
    (nh,) = _U32.unpack_from(data)
    at = _U32.size
    header: dict[str, Any] = json.loads(data[at : at + nh])
    ids_at = at + nh
    (ni,) = _U32.unpack_from(data, ids_at)
    return header, data, ids_at, ids_at + _U32.size + ni


def decode_target_set(name: str, raw: bytes | memoryview) -> tuple[TargetSetInfo, list[str], np.ndarray]:
    """``(info, ids, vectors (m, d) float32)`` of a ``targets`` value (with or without sketches)."""
    header, data, ids_at, vec_at = _parse(raw)
    ids: list[str] = json.loads(data[ids_at + _U32.size : vec_at].decode("utf-8"))
    count, dim = int(header["count"]), int(header["dim"])
    vectors = (
        np.frombuffer(data, dtype="<f4", count=count * dim, offset=vec_at)
        .reshape(count, dim)
        .astype(np.float32)
    )
    info = TargetSetInfo(
        name=name,
        count=count,
        model=str(header["model"]),
        dim=dim,
        content_hash=str(header["content_hash"]),
        created=float(header.get("created", 0.0)),
    )
    return info, ids, vectors


def decode_target_sketches(raw: bytes | memoryview) -> np.ndarray | None:
    """The ``(m, buckets)`` float16 sketches of a ``targets`` value; None when it has none (older values)."""
    header, data, _ids_at, vec_at = _parse(raw)
    width = int(header.get("sketch_buckets", 0))
    if width < 1:
        return None
    count, dim = int(header["count"]), int(header["dim"])
    at = vec_at + 4 * count * dim
    return (
        np.frombuffer(data, dtype=SKETCH_DTYPE, count=count * width, offset=at).reshape(count, width).copy()
    )
