"""One stored chunk of a pool's rows (vectors and row metadata), and a snapshot of a pool record.

Shared by the whole-pool load and record lookups (:mod:`gotd.cache.store.read`) and by the snapshots
that grow by the change log (:mod:`gotd.cache.store.changes`).
"""

from __future__ import annotations

import lmdb
import numpy as np

from gotd.cache.sketch_rows import SparseRows
from gotd.cache.store.columns import LabelColumn, TextColumn
from gotd.cache.store.layout import VECTOR_DTYPES, PoolArrays, PoolRecord, RowChunk, u64_key

__all__ = ["read_chunk", "snapshot"]

Dbs = dict[str, lmdb._Database]


def read_chunk(
    txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord, chunk: int
) -> tuple[np.ndarray, RowChunk] | None:
    """The vectors ``(rows, dim)`` (the pool's storage dtype, read-only) and the row metadata of ``chunk``;
    None when either is missing."""
    key = u64_key(pool.prefix, chunk)
    raw = txn.get(key, db=dbs["vectors"])
    meta = txn.get(key, db=dbs["rows"])
    if raw is None or meta is None:
        return None
    return np.frombuffer(raw, dtype=VECTOR_DTYPES[pool.dtype]).reshape(-1, pool.dim), RowChunk.decode(meta)


def snapshot(
    pool: PoolRecord,
    vectors: np.ndarray,
    ids: TextColumn,
    keys: np.ndarray,
    domains: LabelColumn,
    row_versions: np.ndarray,
    sketches: SparseRows | None,
    deleted: np.ndarray | None = None,
) -> PoolArrays:
    """The row-aligned arrays as a snapshot of ``pool`` at its version."""
    return PoolArrays(
        name=pool.name,
        version=pool.version,
        model=pool.model,
        dim=pool.dim,
        vectors=vectors,
        ids=ids,
        keys=keys,
        domains=domains,
        row_versions=row_versions,
        uid=pool.uid,
        sketches=sketches,
        deleted=deleted,
    )
