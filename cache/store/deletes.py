"""Row deletes: tombstones. A deleted candidate keeps its row (rows never move, so every row index,
cached value and change-log entry stays valid) and is marked in the ``deleted`` database::

    deleted   P + u64 row -> b""          (present: the row is deleted)

A delete is one write transaction: the rows are marked, their row versions set to the new pool
version (so potential epochs count them as written since), the change log records them as deleted
rows (:func:`gotd.cache.store.changes.log_change`) and the pool version goes up by one. The id keeps
its row: ingesting the id again writes the row anew and clears the mark (the record is revived).
Snapshots carry a deleted-row mask (``PoolArrays.deleted``); the service leaves those rows out of the
solve, the scores and every ranking. ``gotd compact`` copies the LMDB file without free pages but does
not rewrite pools, so tombstoned rows keep their space until the pool is rebuilt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import lmdb
import numpy as np

from gotd.cache.errors import FailedPrecondition, InvalidArgument
from gotd.cache.records import validate_id
from gotd.cache.store.changes import log_change
from gotd.cache.store.env import Abort
from gotd.cache.store.idindex import lookup_rows
from gotd.cache.store.layout import (
    PoolRecord,
    RowChunk,
    chunk_parts,
    u64_key,
    u64_keys,
)
from gotd.cache.store.sketch import SKETCH_DB
from gotd.cache.store.sketchstats import keep_stats, read_rows
from gotd.cache.store.tombstones import DELETED_DB, deleted_of

__all__ = ["DeleteResult", "delete_txn"]

Dbs = dict[str, lmdb._Database]


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """Outcome of one delete: rows marked deleted, ids not in the pool (unknown or deleted before),
    and the pool version after it (unchanged when nothing was deleted)."""

    deleted: int
    not_found: int
    version: int


def delete_txn(txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord, ids: Sequence[str]) -> DeleteResult:
    """Mark the rows of ``ids`` in ``pool`` deleted (inside the write transaction; Abort when none)."""
    db = dbs.get(DELETED_DB)
    if db is None:
        raise InvalidArgument("this store cannot delete rows (it was opened read-only by an older gotd)")
    unique = list(dict.fromkeys(validate_id(i) for i in ids))
    at, _keys = lookup_rows(txn, dbs["ids"], pool, unique)
    live = np.sort(at[at >= 0])
    if len(live):
        live = live[~deleted_of(txn, dbs, pool, live)]
    if not len(live):
        raise Abort(DeleteResult(0, len(unique), pool.version))
    version = pool.version + 1
    with txn.cursor(db=db) as cur:
        cur.putmulti([(k, b"") for k in u64_keys(pool.prefix, live.astype(np.uint64))])
    for chunk, _part, local in chunk_parts(live, pool.chunk_rows):
        key = u64_key(pool.prefix, chunk)
        raw = txn.get(key, db=dbs["rows"])
        if raw is None:
            raise FailedPrecondition(f"pool {pool.name!r} is inconsistent: row chunk {chunk} is missing")
        meta = RowChunk.decode(raw)
        meta.versions[local] = version
        txn.put(key, meta.encode(), db=dbs["rows"])
    log_change(txn, dbs, pool, version, live, deleted=True)
    if pool.sketch_buckets and SKETCH_DB in dbs:  # the deleted rows leave the document frequency
        removed = read_rows(txn, dbs[SKETCH_DB], pool, live)
        keep_stats(txn, dbs["meta"], pool, version, removed=removed)
    record = replace(pool, version=version, updated=time.time(), deleted=pool.deleted + len(live))
    txn.put(pool.name.encode("utf-8"), record.encode(), db=dbs["pools"])
    return DeleteResult(len(live), len(unique) - len(live), version)
