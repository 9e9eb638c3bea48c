"""Per-pool sketch statistics kept beside the sketch rows, so whole-pool sketch facts need no pass over them.

The fused cost's IDF weights need the document frequency of every bucket over the pool's live rows,
and the cost validation (and the fused cost) whether every row has a sketch. Both are a pass over all
the pool's sketch rows (200 MiB at 100k rows), and the cost validation reads only a thousand or two of
those rows otherwise. So the store keeps them, updated in the write transaction of every upsert,
delete and sketch backfill batch::

    meta  b"sketch_df/" + P -> u64 pool version, u64 zero rows, int64 x sketch_buckets document frequency

- *document frequency*: per bucket, the live (not deleted) rows whose stored float16 value has a
  non-zero bit pattern (what ``gotd.server.selection.sketches.document_frequency`` counts);
- *zero rows*: rows, deleted ones too, with no non-zero value but sign bits (what
  ``gotd.server.selection.costs.complete_sketches`` calls a row without a sketch).

The value names the pool version it describes. A write that finds it at the pool's version before the
write moves it to the new version; one that does not (a pool written by an older gotd) leaves it out
of date, and a reader then computes from the rows as before (:func:`read_stats` gives None). A pool
created by this gotd, or backfilled from no sketches at all, has it from its first write. A pool
without it gets it from the first reader that passes over its rows (:func:`stats_of`, the server's
fused or validated request on a whole load): :func:`put_stats` stores them in a write transaction only
while the pool is still at the version they were computed at, so a write in between (which found
none to move on) leaves them absent, never wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import lmdb
import numpy as np

from gotd.cache.sketch_rows import SKETCH_DTYPE, SparseRows, magnitudes
from gotd.cache.store.layout import PoolRecord, chunk_parts, u64_key
from gotd.cache.store.sketch import SKETCH_DB, backfill_marker
from gotd.cache.store.sketch_codec import chunk_length, decode_rows

__all__ = [
    "SketchStats",
    "bucket_counts",
    "keep_stats",
    "put_stats",
    "read_rows",
    "read_stats",
    "stats_at",
    "stats_key",
    "stats_of",
    "zero_count",
]

_HEAD = struct.Struct("<QQ")
_BLOCK_ROWS = 4096  # a pass over the rows: temporaries of a few MiB at 1,024 buckets


def stats_key(prefix: bytes) -> bytes:
    """The ``meta`` key of the sketch statistics of the pool ``prefix``."""
    return b"sketch_df/" + prefix


def bucket_counts(rows: SparseRows | np.ndarray) -> np.ndarray:
    """Rows with a non-zero bit pattern, per bucket (int64), of float16 ``rows`` (dense or sparse)."""
    if isinstance(rows, SparseRows):
        set_ = (rows.values.view("<u2") != 0) if len(rows.values) else np.zeros(0, dtype=bool)
        counts: np.ndarray = np.bincount(rows.indices[set_], minlength=rows.width).astype(np.int64)
        return counts
    bits = np.asarray(rows, dtype=SKETCH_DTYPE).view(np.uint16)
    dense: np.ndarray = np.count_nonzero(bits, axis=0).astype(np.int64)
    return dense


def zero_count(rows: SparseRows | np.ndarray) -> int:
    """Rows with no non-zero value (``-0.0`` is zero) of float16 ``rows`` (dense or sparse)."""
    if isinstance(rows, SparseRows):
        return int(len(rows) - np.count_nonzero(rows.row_any()))
    return int(len(rows) - np.count_nonzero(magnitudes(rows).any(axis=1)))


@dataclass(frozen=True, slots=True)
class SketchStats:
    """Sketch statistics of one pool version (see the module docstring)."""

    version: int
    zero_rows: int
    df: np.ndarray

    @staticmethod
    def empty(version: int, zero_rows: int, width: int) -> SketchStats:
        """Statistics of a pool whose ``zero_rows`` rows all have no sketch."""
        return SketchStats(version, zero_rows, np.zeros(width, dtype=np.int64))

    def encode(self) -> bytes:
        return _HEAD.pack(self.version, self.zero_rows) + self.df.astype("<i8").tobytes()

    @staticmethod
    def decode(raw: bytes | memoryview) -> SketchStats:
        version, zero_rows = _HEAD.unpack_from(raw)
        df = np.frombuffer(raw, dtype="<i8", offset=_HEAD.size).astype(np.int64)
        return SketchStats(int(version), int(zero_rows), df)

    def changed(
        self,
        version: int,
        *,
        removed: SparseRows | np.ndarray | None = None,
        added: SparseRows | None = None,
        zeros: int = 0,
    ) -> SketchStats:
        """These statistics at ``version``: the sketch rows ``removed`` left the live rows, ``added``
        joined them (float16 rows; None: none), and the zero rows changed by ``zeros``."""
        df = self.df.copy()
        if removed is not None and len(removed):
            df -= bucket_counts(removed)
        if added is not None and len(added):
            df += bucket_counts(added)
        return SketchStats(version, self.zero_rows + zeros, df)


def stats_of(version: int, rows: SparseRows | np.ndarray, deleted: np.ndarray | None = None) -> SketchStats:
    """The statistics of pool version ``version`` from a pass over all its float16 sketch ``rows`` (dense,
    or sparse as a snapshot keeps them; ``deleted`` marks the rows deleted): what the writes would
    have kept."""
    df = np.zeros(rows.shape[1], dtype=np.int64)
    zero_rows = 0
    for start in range(0, rows.shape[0], _BLOCK_ROWS):
        stop = min(rows.shape[0], start + _BLOCK_ROWS)
        block = rows.rows(start, stop) if isinstance(rows, SparseRows) else rows[start:stop]
        zero_rows += zero_count(block)
        if deleted is not None:
            live = np.flatnonzero(~deleted[start:stop])
            block = block.take(live) if isinstance(block, SparseRows) else block[live]
        df += bucket_counts(block)
    return SketchStats(version, zero_rows, df)


def put_stats(
    txn: lmdb.Transaction, meta: lmdb._Database, pool: PoolRecord | None, uid: str, stats: SketchStats
) -> bool:
    """Store ``stats`` (:func:`stats_of` the rows of incarnation ``uid`` at ``stats.version``) when the pool
    is still there and at that version, keeps none, and no sketch backfill is under way; else nothing."""
    if pool is None or (pool.uid, pool.version) != (uid, stats.version):
        return False
    if stats.df.shape != (pool.sketch_buckets,) or txn.get(backfill_marker(pool.prefix), db=meta) is not None:
        return False
    if _stored(txn, meta, pool) is not None:
        return False
    txn.put(stats_key(pool.prefix), stats.encode(), db=meta)
    return True


def read_stats(txn: lmdb.Transaction, meta: lmdb._Database, pool: PoolRecord) -> SketchStats | None:
    """The statistics of ``pool`` at its version for a reader; None when they are absent or out of
    date, the pool keeps no sketches, or a sketch backfill is under way (its rows change without a
    version bump, so a reader could not match them to a snapshot's)."""
    if txn.get(backfill_marker(pool.prefix), db=meta) is not None:
        return None
    return _stored(txn, meta, pool)


def keep_stats(
    txn: lmdb.Transaction,
    meta: lmdb._Database,
    pool: PoolRecord,
    version: int,
    *,
    start: SketchStats | None = None,
    removed: SparseRows | np.ndarray | None = None,
    added: SparseRows | None = None,
    zeros: int = 0,
) -> None:
    """Move the statistics of ``pool`` (its record before the write; ``start`` instead when given) to
    ``version`` with a write's changes (:meth:`SketchStats.changed`); out of date ones are dropped."""
    stats = start if start is not None else _stored(txn, meta, pool)
    if stats is None:
        txn.delete(stats_key(pool.prefix), db=meta)
        return
    changed = stats.changed(version, removed=removed, added=added, zeros=zeros)
    txn.put(stats_key(pool.prefix), changed.encode(), db=meta)


def _stored(txn: lmdb.Transaction, meta: lmdb._Database, pool: PoolRecord) -> SketchStats | None:
    if pool.sketch_buckets < 1:
        return None
    raw = txn.get(stats_key(pool.prefix), db=meta)
    if raw is None:
        return None
    stats = SketchStats.decode(raw)
    if stats.version != pool.version or stats.df.shape != (pool.sketch_buckets,):
        return None
    return stats


def stats_at(
    txn: lmdb.Transaction, dbs: dict[str, lmdb._Database], pool: PoolRecord | None, uid: str, version: int
) -> SketchStats | None:
    """:func:`read_stats` of ``pool`` when it is still incarnation ``uid`` at ``version`` (else None)."""
    if pool is None or (pool.uid, pool.version) != (uid, version) or SKETCH_DB not in dbs:
        return None
    return read_stats(txn, dbs["meta"], pool)


def read_rows(txn: lmdb.Transaction, db: lmdb._Database, pool: PoolRecord, rows: np.ndarray) -> np.ndarray:
    """The stored sketch rows ``rows`` (sorted ascending, int64) of ``pool``, dense float16; absent
    ones are zero. Only those rows are decoded (read the chunks as buffers: no chunk is copied)."""
    width, size = pool.sketch_buckets, pool.sketch_rows
    out = np.zeros((len(rows), width), dtype=SKETCH_DTYPE)
    for chunk, part, local in chunk_parts(rows, size):
        raw = txn.get(u64_key(pool.prefix, chunk), db=db)
        if raw is None:
            continue
        inside = local < chunk_length(raw, width)
        if inside.any():
            out[part[inside]] = decode_rows(raw, width, local[inside])
    return out
