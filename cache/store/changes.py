"""The change log of a pool and snapshots that grow: a new version's snapshot is the previous one
patched with the rows written since, read from LMDB row by row instead of reloading the pool.

Every upsert that changes a pool writes, in its transaction, the rows it wrote under its new version
(``changes`` database: ``P + u64 version -> little-endian u64 rows``); a delete writes the rows it
marked deleted after the marker ``2**64 - 1`` (a row no pool has: an older gotd reloads instead of
misreading it), so a grown snapshot only updates their mask and row versions. Versions without a log entry
(written by an older gotd, or a sketch backfill, which rewrites sketches only) make
:func:`grow_snapshot` answer None, and the caller reloads the pool whole.

A grown snapshot shares nothing the older one can see change: rows appended past the older snapshot's
end go into spare capacity of its row buffers (:mod:`gotd.cache.store.buffers`), anything else is
copied.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

import lmdb
import numpy as np

from gotd.cache.store.buffers import grown_rows
from gotd.cache.store.chunks import read_chunk, snapshot
from gotd.cache.store.layout import PoolArrays, PoolRecord, RowChunk, chunk_parts, u64_key
from gotd.cache.store.pages import release
from gotd.cache.store.sketch import SKETCH_DB, grown_sketches
from gotd.cache.store.tombstones import deleted_mask, deleted_of

__all__ = ["CHANGES_DB", "changed_rows", "grow_snapshot", "log_change"]

CHANGES_DB: Final = "changes"
_DELETED_MARK: Final = np.uint64(2**64 - 1)

Dbs = dict[str, lmdb._Database]


def log_change(
    txn: lmdb.Transaction,
    dbs: Dbs,
    pool: PoolRecord,
    version: int,
    rows: np.ndarray,
    *,
    deleted: bool = False,
) -> None:
    """Record that ``version`` of ``pool`` wrote ``rows`` (or marked them ``deleted``), inside the write
    transaction."""
    db = dbs.get(CHANGES_DB)
    if db is not None:
        values = np.asarray(rows, dtype="<u8")
        if deleted:
            values = np.concatenate([np.asarray([_DELETED_MARK], dtype="<u8"), values])
        txn.put(u64_key(pool.prefix, version), values.tobytes(), db=db)


def changed_rows(
    txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord, since: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted unique rows written, and rows marked deleted, by versions ``since + 1 .. pool.version``;
    None when one is not logged."""
    db = dbs.get(CHANGES_DB)
    if db is None or since > pool.version:
        return None
    parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for version in range(since + 1, pool.version + 1):
        raw = txn.get(u64_key(pool.prefix, version), db=db)
        if raw is None:
            return None
        rows = np.frombuffer(raw, dtype="<u8")
        deleted = int(len(rows) > 0 and rows[0] == _DELETED_MARK)
        parts[deleted].append(rows[1:] if deleted else rows)
    empty = np.zeros(0, dtype=np.int64)
    written, deleted_rows = (np.unique(np.concatenate(p)).astype(np.int64) if p else empty for p in parts)
    return written, deleted_rows


def grow_snapshot(
    txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord, base: PoolArrays, *, with_sketches: bool = True
) -> PoolArrays | None:
    """``base`` patched to ``pool``'s version by the rows written since; None when that is not possible
    (another incarnation of the pool, an older version than ``base``, a version without a log entry).

    ``with_sketches``: ``base`` was loaded with the sketch rows (None there: the pool had none), and
    the grown snapshot has them too (its first ones when the rows written since bring some)."""
    if pool.uid != base.uid or pool.version < base.version or pool.count < len(base.ids):
        return None
    changed = changed_rows(txn, dbs, pool, base.version)
    if changed is None or any(len(r) and (r[-1] >= pool.count or r[0] < 0) for r in changed):
        return None
    rows, deleted = changed
    if len(rows) == 0 and len(deleted) == 0 and pool.count == len(base.ids):
        return base if pool.version == base.version else replace(base, version=pool.version)
    n_old, n = len(base.ids), pool.count
    appended = len(rows) == n - n_old and (len(rows) == 0 or rows[0] == n_old)
    vectors = grown_rows(base.vectors, n, appended)
    keys = grown_rows(base.keys, n, appended)
    versions = grown_rows(base.row_versions, n, appended)
    new_ids: list[str] = []  # ids of the rows past ``base`` (a row keeps its id: only these are new)
    domains: list[str] = []  # the domain of every written row
    for chunk, part, local in chunk_parts(rows, pool.chunk_rows):
        found = read_chunk(txn, dbs, pool, chunk)
        if found is None:
            return None
        block, meta = found
        if int(local.max()) >= min(len(block), len(meta.ids)):
            return None
        target = rows[part]
        vectors[target] = block[local]
        keys[target] = meta.keys[local]
        versions[target] = meta.versions[local]
        if not _same_names(base, target, meta.ids, local, new_ids):
            return None
        domains.extend(map(meta.domains.__getitem__, local.tolist()))
        release(block)
    if len(new_ids) != n - n_old:
        return None
    sketches = grown_sketches(txn, dbs.get(SKETCH_DB), pool, base.sketches, rows) if with_sketches else None
    touched = np.union1d(rows, deleted)
    mask = _grown_mask(txn, dbs, pool, base, touched)
    if len(deleted):  # their row versions changed; ``versions`` may share the older snapshot's buffer
        versions = versions.copy()
        for chunk, part, local in chunk_parts(deleted, pool.chunk_rows):
            meta_raw = txn.get(u64_key(pool.prefix, chunk), db=dbs["rows"])
            if meta_raw is None:
                return None
            versions[deleted[part]] = RowChunk.decode(meta_raw).versions[local]
    ids = base.ids.extended(new_ids)
    labels = base.domains.patched(n, rows, domains, appended)
    return snapshot(pool, vectors, ids, keys, labels, versions, sketches, mask)


def _same_names(
    base: PoolArrays, target: np.ndarray, chunk_ids: list[str], local: np.ndarray, new_ids: list[str]
) -> bool:
    """Collect into ``new_ids`` the ids of the ``target`` rows past ``base`` (``chunk_ids[local]``);
    whether the rows ``base`` has keep their id there (else the pool is not the one ``base`` saw)."""
    n_old = len(base.ids)
    old = int(np.searchsorted(target, n_old))
    if old and base.ids.take(target[:old]) != [chunk_ids[j] for j in local[:old].tolist()]:
        return False
    new_ids.extend(map(chunk_ids.__getitem__, local[old:].tolist()))
    return True


def _grown_mask(
    txn: lmdb.Transaction, dbs: Dbs, pool: PoolRecord, base: PoolArrays, touched: np.ndarray
) -> np.ndarray | None:
    """The deleted-row mask of ``pool``: ``base``'s with the ``touched`` rows read again."""
    if not pool.deleted:
        return None
    if base.deleted is None and not len(touched):
        return deleted_mask(txn, dbs, pool)
    mask = np.zeros(pool.count, dtype=bool)
    if base.deleted is not None:
        mask[: len(base.deleted)] = base.deleted
    mask[touched] = deleted_of(txn, dbs, pool, touched)
    return mask if mask.any() else None
