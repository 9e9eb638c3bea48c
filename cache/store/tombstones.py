"""Tombstones: the deleted-row marks of pools (``deleted`` database, ``P + u64 row -> b""``).

See :mod:`gotd.cache.store.deletes` for what a delete does; these are the primitives the upsert (which
revives rows), the pool load and the growing snapshots (:mod:`gotd.cache.store.changes`) share.
"""

from __future__ import annotations

from typing import Final

import lmdb
import numpy as np

from gotd.cache.store.layout import PoolRecord, u64_keys

__all__ = ["DELETED_DB", "deleted_mask", "deleted_of", "undelete"]

DELETED_DB: Final = "deleted"
Dbs = dict[str, lmdb._Database]


def deleted_of(txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord, rows: np.ndarray) -> np.ndarray:
    """Whether each of ``rows`` is deleted (bool, aligned with ``rows``)."""
    db = dbs.get(DELETED_DB)
    out = np.zeros(len(rows), dtype=bool)
    if db is None or not pool.deleted or not len(rows):
        return out
    keys = u64_keys(pool.prefix, np.asarray(rows, dtype=np.uint64))
    out[:] = [txn.get(k, db=db) is not None for k in keys]
    return out


def deleted_mask(txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord) -> np.ndarray | None:
    """The pool's deleted-row mask (bool, one per row); None when no row is deleted."""
    db = dbs.get(DELETED_DB)
    if db is None or not pool.deleted:
        return None
    mask = np.zeros(pool.count, dtype=bool)
    prefix = pool.prefix
    with txn.cursor(db=db) as cur:
        ok = cur.set_range(prefix)
        while ok and cur.key()[: len(prefix)] == prefix:
            row = int.from_bytes(cur.key()[len(prefix) :], "big")
            if row < pool.count:
                mask[row] = True
            ok = cur.next()
    return mask if mask.any() else None


def undelete(txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord, rows: np.ndarray) -> int:
    """Clear the marks of ``rows`` that are deleted (an upsert writing them revives them); the count."""
    revived = rows[deleted_of(txn, dbs, pool, rows)]
    db = dbs.get(DELETED_DB)
    for key in u64_keys(pool.prefix, revived.astype(np.uint64)) if db is not None else []:
        txn.delete(key, db=db)
    return len(revived)
