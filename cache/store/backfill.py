"""Backfill of the n-gram sketches of an existing pool from its stored texts (the upgrade path).

A pool written by an older gotd, or by a store without a sketch function, keeps no sketches
(``sketch_buckets == 0``) or zero rows, so the engine cannot use the fused cost on it.
:func:`backfill_sketches` computes the missing rows from the texts in the pool's contents, in batches
of rows: each batch's texts are read in a read transaction, sketched with no transaction open, and
written in one short write transaction, so a huge pool never holds the write lock for long and
readers and writers (a server on the same data directory, in this process or another) keep going.

The first batch that writes sets the pool's ``sketch_buckets``/``sketch_rows``; from then on every
upsert keeps the pool's sketches itself. A batch writes a row only when its row version is still the
one read with its text; a row rewritten meanwhile is read again. Rows already sketched are skipped, so
a rerun after a crash (or after an interrupted run) finishes the rest.

The pool version goes up by exactly one, in a final transaction, once every row is done. Until then a
``meta`` marker (:func:`~gotd.cache.store.sketch.backfill_marker`) records that the pool's sketches
changed without a version bump, so a run interrupted after its last batch still bumps on the rerun. A
snapshot loaded mid-way shows some rows still zero: the engine uses the fused cost only on a pool whose
rows all have sketches, so such a snapshot behaves like the pool before the backfill.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import lmdb
import numpy as np

from gotd.cache.errors import FailedPrecondition, InvalidArgument
from gotd.cache.sketch_rows import SparseRows
from gotd.cache.store.env import Abort, Env
from gotd.cache.store.layout import PoolRecord, chunk_rows_for, decode_content, u64_key, u64_keys
from gotd.cache.store.read import require_pool
from gotd.cache.store.sketch import (
    SKETCH_DB,
    SKETCH_DTYPE,
    Sketcher,
    backfill_marker,
    sketch_rows,
    write_sketch_rows,
)
from gotd.cache.store.sketch_codec import decode_chunk
from gotd.cache.store.sketchstats import SketchStats, keep_stats, zero_count
from gotd.cache.store.tombstones import deleted_of

__all__ = ["BackfillResult", "backfill_sketches"]

LOG = logging.getLogger(__name__)
Dbs = dict[str, lmdb._Database]
Progress = Callable[[int, int], None]
#: Rereads of one batch whose rows keep being rewritten before it is left for a rerun.
MAX_RETRIES: Final = 8
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """Outcome of a sketch backfill of one pool.

    Attributes
    ----------
    rows_sketched : int
        Rows whose sketch this run computed and wrote.
    rows_without_text : int
        Rows left without a sketch: no text, an empty one, or one without any n-gram.
    version : int
        The pool version afterwards (bumped by one when the pool's sketches changed).
    """

    rows_sketched: int
    rows_without_text: int
    version: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """The rows of one batch that need a sketch, read in one read transaction."""

    count: int  # pool rows at the read
    stop: int  # end of the batch's row range
    rows: np.ndarray  # int64, ascending
    versions: np.ndarray  # uint64 row versions read with the texts
    texts: list[str]
    without_text: int


def backfill_sketches(
    env: Env,
    sketcher: Sketcher | None,
    pool: str,
    *,
    batch_rows: int = 4096,
    progress: Progress | None = None,
) -> BackfillResult:
    """Compute and store the missing sketch rows of ``pool`` from its stored texts.

    Batches of ``batch_rows`` rows, each sketched outside its own short write transaction; safe
    alongside other users of the store, crash-safe, idempotent. ``progress(done, total)`` follows
    each batch. The pool version goes up by one, in a final transaction, when sketches were written
    (by this run or an interrupted one). Row versions stay: they name the record's write, which a
    derived sketch does not change (FAISS indexes need no rebuild; no cached fused-cost potential
    predates a backfilled row, as that cost needs every row sketched).

    Raises
    ------
    FailedPrecondition
        No sketch function, or the pool keeps sketches of another width.
    NotFound
        No such pool.
    InvalidArgument
        ``batch_rows < 1``.
    """
    if sketcher is None:
        raise FailedPrecondition(
            f"pool {pool!r}: a sketch backfill needs a store opened with a sketch function "
            "(Store(path, sketcher=gotd.server.selection.sketches.tf_sparse))"
        )
    if batch_rows < 1:
        raise InvalidArgument(f"batch_rows must be >= 1, got {batch_rows}")
    dbs = env.dbs
    if SKETCH_DB not in dbs:
        raise FailedPrecondition(f"store {env.path} has no sketches database (open it read-write)")
    width = sketch_rows(sketcher, [None]).width
    first = env.read(lambda txn: require_pool(txn, dbs, pool))
    if first.sketch_buckets not in (0, width):
        raise FailedPrecondition(
            f"pool {pool!r} keeps sketches of {first.sketch_buckets} buckets, "
            f"the sketch function gives {width}"
        )
    uid = first.uid
    sketched = without = retries = start = 0
    while True:
        plan = env.read(
            functools.partial(_plan, dbs=dbs, pool=pool, uid=uid, start=start, batch_rows=batch_rows)
        )
        if start >= plan.count:
            break
        values = sketch_rows(sketcher, plan.texts) if plan.texts else SparseRows.zeros(0, width)
        if values.width != width:
            raise FailedPrecondition(
                f"the sketch function gave {width} buckets, then {values.width} for pool {pool!r}"
            )
        found = values.row_any()
        skipped = 0
        if found.any():
            rows, versions, values = (
                plan.rows[found],
                plan.versions[found],
                values.take(np.flatnonzero(found)),
            )
            written, skipped = env.write(
                functools.partial(
                    _write,
                    dbs=dbs,
                    pool=pool,
                    uid=uid,
                    width=width,
                    rows=rows,
                    versions=versions,
                    values=values,
                )
            )
            sketched += written
        if skipped and retries < MAX_RETRIES:
            retries += 1  # rows rewritten since the read: read the batch again
            continue
        if skipped:
            LOG.warning("pool %s: %d rows kept changing; a rerun sketches them", pool, skipped)
        without += plan.without_text + int((~found).sum())
        retries, start = 0, plan.stop
        if progress is not None:
            progress(min(start, plan.count), plan.count)
    version = env.write(functools.partial(_finish, dbs=dbs, pool=pool, uid=uid))
    LOG.info(
        "sketch backfill of pool %s: %d rows sketched, %d without text, version %d",
        pool,
        sketched,
        without,
        version,
    )
    return BackfillResult(rows_sketched=sketched, rows_without_text=without, version=version)


def _pool(txn: lmdb.Transaction, dbs: Dbs, pool: str, uid: str) -> PoolRecord:
    rec = require_pool(txn, dbs, pool)
    if rec.uid != uid:
        raise FailedPrecondition(f"pool {pool!r} was deleted and created again during the backfill")
    return rec


def _plan(txn: lmdb.Transaction, dbs: Dbs, pool: str, uid: str, start: int, batch_rows: int) -> _Plan:
    """Rows in ``[start, start + batch_rows)`` whose sketch is zero, with their texts and versions."""
    rec = _pool(txn, dbs, pool, uid)
    stop = min(start + batch_rows, rec.count)
    if start >= stop:
        return _Plan(rec.count, stop, np.zeros(0, np.int64), np.zeros(0, np.uint64), [], 0)
    rows = np.arange(start, stop, dtype=np.int64)
    if rec.sketch_buckets:
        rows = rows[~_sketch_rows(txn, dbs[SKETCH_DB], rec, start, stop).any(axis=1)]
    keys = u64_keys(rec.prefix, rows.astype(np.uint64))
    contents = dict(txn.cursor(db=dbs["content"]).getmulti(keys))
    texts = [decode_content(contents[k])[2] if k in contents else None for k in keys]
    has = np.fromiter((bool(t) for t in texts), dtype=bool, count=len(texts))
    rows = rows[has]
    return _Plan(
        count=rec.count,
        stop=stop,
        rows=rows,
        versions=_row_versions(txn, dbs, rec, rows),
        texts=[t for t in texts if t],
        without_text=int((~has).sum()),
    )


def _sketch_rows(
    txn: lmdb.Transaction, db: lmdb._Database, rec: PoolRecord, start: int, stop: int
) -> np.ndarray:
    """Stored sketch rows ``[start, stop)`` of ``rec`` (absent chunks and rows read as zero)."""
    width, size = rec.sketch_buckets, rec.sketch_rows
    out = np.zeros((stop - start, width), dtype=SKETCH_DTYPE)
    for chunk in range(start // size, (stop - 1) // size + 1):
        raw = txn.get(u64_key(rec.prefix, chunk), db=db)
        if raw is None:
            continue
        block = decode_chunk(raw, width)
        lo, hi = max(start, chunk * size), min(stop, chunk * size + len(block))
        if lo < hi:
            out[lo - start : hi - start] = block[lo - chunk * size : hi - chunk * size]
    return out


def _row_versions(txn: lmdb.Transaction, dbs: Dbs, rec: PoolRecord, rows: np.ndarray) -> np.ndarray:
    """The stored version of each of ``rows`` (0 for a row missing from its chunk)."""
    out = np.zeros(len(rows), dtype=np.uint64)
    chunks: dict[int, np.ndarray] = {}
    for i, row in enumerate(rows.tolist()):
        chunk, local = divmod(row, rec.chunk_rows)
        versions = chunks.get(chunk)
        if versions is None:
            raw = txn.get(u64_key(rec.prefix, chunk), db=dbs["rows"])
            if raw is None:
                versions = np.zeros(0, np.uint64)
            else:  # the head of a RowChunk: u32 n, then n u64 versions
                (n,) = _U32.unpack_from(raw)
                versions = np.frombuffer(raw, dtype="<u8", count=n, offset=_U32.size).astype(np.uint64)
            chunks[chunk] = versions
        if local < len(versions):
            out[i] = versions[local]
    return out


def _write(
    txn: lmdb.Transaction,
    dbs: Dbs,
    pool: str,
    uid: str,
    width: int,
    rows: np.ndarray,
    versions: np.ndarray,
    values: SparseRows,
) -> tuple[int, int]:
    """Write the sketches of the rows whose version is still the one read; ``(written, skipped)``."""
    rec = _pool(txn, dbs, pool, uid)
    keep = _row_versions(txn, dbs, rec, rows) == versions
    written, skipped = int(keep.sum()), int((~keep).sum())
    if not written:
        raise Abort((0, skipped))
    if rec.sketch_buckets not in (0, width):
        raise FailedPrecondition(
            f"pool {pool!r} now keeps sketches of {rec.sketch_buckets} buckets, not {width}"
        )
    start = None
    if not rec.sketch_buckets:  # every row a zero row so far: the statistics start here
        rec = replace(rec, sketch_buckets=width, sketch_rows=chunk_rows_for(width, SKETCH_DTYPE.name))
        txn.put(pool.encode("utf-8"), rec.encode(), db=dbs["pools"])
        start = SketchStats.empty(rec.version, rec.count, width)
    rows, values = rows[keep], values.take(np.flatnonzero(keep))
    old = write_sketch_rows(txn, dbs[SKETCH_DB], rec, rows, values)
    live = np.flatnonzero(~deleted_of(txn, dbs, rec, rows))
    zeros = zero_count(values) - zero_count(old)
    keep_stats(
        txn,
        dbs["meta"],
        rec,
        rec.version,
        start=start,
        removed=old.take(live),
        added=values.take(live),
        zeros=zeros,
    )
    txn.put(backfill_marker(rec.prefix), b"", db=dbs["meta"])
    return written, skipped


def _finish(txn: lmdb.Transaction, dbs: Dbs, pool: str, uid: str) -> int:
    """Bump the pool version by one when a backfill wrote rows since the last bump; the version."""
    rec = _pool(txn, dbs, pool, uid)
    marker = backfill_marker(rec.prefix)
    if txn.get(marker, db=dbs["meta"]) is None:
        raise Abort(rec.version)
    keep_stats(txn, dbs["meta"], rec, rec.version + 1)
    rec = replace(rec, version=rec.version + 1, updated=time.time())
    txn.put(pool.encode("utf-8"), rec.encode(), db=dbs["pools"])
    txn.delete(marker, db=dbs["meta"])
    return rec.version
