"""Read transactions of the store: bulk pool loads, id lookups, metadata; and the pool delete.

Functions here take an open LMDB transaction and the store's database handles;
:class:`~gotd.cache.store.core.Store` runs them under its locks (and retries after a map growth).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import lmdb
import numpy as np

from gotd.cache.errors import FailedPrecondition, InvalidArgument, NotFound
from gotd.cache.records import validate_id, validate_name
from gotd.cache.store.buffers import spare_rows
from gotd.cache.store.changes import CHANGES_DB, grow_snapshot
from gotd.cache.store.chunks import read_chunk, snapshot
from gotd.cache.store.columns import LabelColumnBuilder, TextColumnBuilder
from gotd.cache.store.idindex import lookup_rows
from gotd.cache.store.idsets import IDSETS_DB
from gotd.cache.store.layout import (
    VECTOR_DTYPES,
    PoolArrays,
    PoolRecord,
    RowChunk,
    StoredRecord,
    decode_content,
    pool_chunks,
    u64_key,
)
from gotd.cache.store.sketch import SKETCH_DB, backfill_marker, load_sketches
from gotd.cache.store.sketchstats import stats_key
from gotd.cache.store.tombstones import DELETED_DB, deleted_mask
from gotd.cache.store.upsert import read_pool

Dbs = dict[str, lmdb._Database]


def require_pool(txn: lmdb.Transaction, dbs: Dbs, pool: str) -> PoolRecord:
    """The stored record of ``pool``; NotFound when absent."""
    record = read_pool(txn, dbs, validate_name(pool, kind="pool"))
    if record is None:
        raise NotFound(f"pool {pool!r} does not exist")
    return record


def load_pool(
    txn: lmdb.Transaction, dbs: Dbs, pool: str, *, sketches: bool = True, upcast: bool = True
) -> PoolArrays:
    """The whole pool as row-aligned arrays: one copy per chunk straight from the memory map.

    ``sketches=False`` skips the sketch rows (``PoolArrays.sketches`` is then None); ``upcast=False``
    keeps the vectors in the pool's storage dtype (float16 pools stay float16 in memory).
    """
    rec = require_pool(txn, dbs, pool)
    n, d, size = rec.count, rec.dim, rec.chunk_rows
    dtype = VECTOR_DTYPES[rec.dtype]
    # spare rows: the next versions' snapshots grow in place
    vectors = spare_rows(n, d, dtype=np.float32 if upcast else dtype.newbyteorder("="))
    flat = vectors.reshape(-1)
    seen = 0
    for chunk, value in pool_chunks(txn, dbs["vectors"], rec.prefix):
        start = chunk * size * d
        part = np.frombuffer(value, dtype=dtype)
        if start + part.size > flat.size:
            break
        flat[start : start + part.size] = part
        seen += part.size
    versions = spare_rows(n, dtype=np.uint64)
    keys = spare_rows(n, dtype=np.uint64)
    ids, domains = TextColumnBuilder(n), LabelColumnBuilder()
    for chunk, value in pool_chunks(txn, dbs["rows"], rec.prefix):
        rows = RowChunk.decode(value)
        start = chunk * size
        if start != ids.count or start + len(rows.ids) > n:
            break
        versions[start : start + len(rows.ids)] = rows.versions
        keys[start : start + len(rows.ids)] = rows.keys
        ids.extend(rows.ids)
        domains.extend(rows.domains)
    if seen != n * d or ids.count != n:
        raise FailedPrecondition(
            f"pool {pool!r} is inconsistent: {n} rows recorded, {seen // max(d, 1)} vectors "
            f"and {ids.count} ids stored"
        )
    tf = load_sketches(txn, dbs.get(SKETCH_DB), rec) if sketches else None
    mask = deleted_mask(txn, dbs, rec)
    return snapshot(rec, vectors, ids.build(), keys, domains.build(), versions, tf, mask)


def load_grown(
    txn: lmdb.Transaction,
    dbs: Dbs,
    pool: str,
    base: PoolArrays | None,
    *,
    sketches: bool = True,
    upcast: bool = True,
) -> tuple[PoolArrays, bool]:
    """``base`` grown to the pool's version by its change log, else the whole pool loaded (``base`` must
    be a load with the same ``upcast``, and the same ``sketches`` but for one case: ``base`` without
    sketch rows at the pool's version, which gets the sketch rows read beside its own arrays); and
    whether it was loaded whole."""
    if base is not None:
        record = require_pool(txn, dbs, pool)
        if sketches and base.sketches is None and (record.uid, record.version) == (base.uid, base.version):
            return replace(base, sketches=load_sketches(txn, dbs.get(SKETCH_DB), record)), True
        grown = grow_snapshot(txn, dbs, record, base, with_sketches=sketches)
        if grown is not None:
            return grown, False
    return load_pool(txn, dbs, pool, sketches=sketches, upcast=upcast), True


def rows_for_ids(txn: lmdb.Transaction, dbs: Dbs, pool: str, ids: Sequence[str]) -> np.ndarray:
    """Rows (int64) of ``ids`` in order; NotFound naming the missing ids."""
    rec = require_pool(txn, dbs, pool)
    rows, _keys = lookup_rows(txn, dbs["ids"], rec, [validate_id(i) for i in ids])
    missing = [ids[j] for j in np.flatnonzero(rows < 0).tolist()]
    if missing:
        raise NotFound(f"pool {pool!r} has no record with id(s) {missing[:10]}")
    return rows


def _pool_rows(
    txn: lmdb.Transaction, dbs: Dbs, pool: str, rows: Sequence[int] | np.ndarray
) -> tuple[PoolRecord, list[int]]:
    """The pool's record and ``rows`` as ints; InvalidArgument naming the rows the pool does not have."""
    rec = require_pool(txn, dbs, pool)
    wanted = [int(r) for r in rows]
    bad = [r for r in wanted if not 0 <= r < rec.count]
    if bad:
        raise InvalidArgument(f"pool {pool!r} has {rec.count} rows; no row {bad[:10]}")
    return rec, wanted


def metadata(
    txn: lmdb.Transaction, dbs: Dbs, pool: str, rows: Sequence[int] | np.ndarray
) -> list[tuple[str, str, str | None]]:
    """``(domain, meta_json, text or None)`` of each row, in the order given."""
    rec, wanted = _pool_rows(txn, dbs, pool, rows)
    keys = [u64_key(rec.prefix, r) for r in wanted]
    found = dict(txn.cursor(db=dbs["content"]).getmulti(keys))
    return [decode_content(found[k]) for k in keys]


def ids_for_rows(txn: lmdb.Transaction, dbs: Dbs, pool: str, rows: Sequence[int] | np.ndarray) -> list[str]:
    """Ids of ``rows`` in the order given (a row's id never changes within a pool)."""
    rec, wanted = _pool_rows(txn, dbs, pool, rows)
    chunks: dict[int, RowChunk] = {}
    out = []
    for row in wanted:
        chunk, local = divmod(row, rec.chunk_rows)
        if chunk not in chunks:
            chunks[chunk] = RowChunk.decode(_must(txn, u64_key(rec.prefix, chunk), dbs["rows"], pool))
        out.append(chunks[chunk].ids[local])
    return out


def get_records(txn: lmdb.Transaction, dbs: Dbs, pool: str, ids: Sequence[str]) -> dict[str, StoredRecord]:
    """What is stored for each of ``ids`` present in ``pool`` (an absent pool or id is left out)."""
    rec = read_pool(txn, dbs, pool)
    if rec is None:
        return {}
    at, _keys = lookup_rows(txn, dbs["ids"], rec, ids)
    out: dict[str, StoredRecord] = {}
    chunks: dict[int, tuple[np.ndarray, RowChunk]] = {}
    for record_id, row in zip(ids, at.tolist(), strict=True):
        if row < 0:
            continue
        chunk, local = divmod(row, rec.chunk_rows)
        if chunk not in chunks:
            found_chunk = read_chunk(txn, dbs, rec, chunk)
            if found_chunk is None:
                raise FailedPrecondition(f"pool {pool!r} is inconsistent: chunk {chunk} is missing")
            chunks[chunk] = found_chunk
        vec, meta = chunks[chunk]
        content = _must(txn, u64_key(rec.prefix, row), dbs["content"], pool)
        domain, meta_json, text = decode_content(content)
        out[record_id] = StoredRecord(
            id=record_id,
            row=row,
            version=int(meta.versions[local]),
            domain=domain,
            meta_json=meta_json,
            text=text,
            vector=vec[local].astype(np.float32),
        )
    return out


def _must(txn: lmdb.Transaction, key: bytes, db: lmdb._Database, pool: str) -> bytes | memoryview:
    value = txn.get(key, db=db)
    if value is None:
        raise FailedPrecondition(f"pool {pool!r} is inconsistent: key {key.hex()} is missing")
    return value


def delete_pool(txn: lmdb.Transaction, dbs: Dbs, pool: str) -> None:
    """Delete every key of ``pool`` and its record (NotFound when absent)."""
    record = require_pool(txn, dbs, pool)
    prefix = record.prefix
    for db in ("ids", "vectors", "rows", "content", SKETCH_DB, CHANGES_DB, IDSETS_DB, DELETED_DB):
        if db not in dbs:
            continue
        with txn.cursor(db=dbs[db]) as cur:
            if not cur.set_range(prefix):
                continue
            while cur.key()[: len(prefix)] == prefix:
                if not cur.delete():
                    break
    txn.delete(backfill_marker(prefix), db=dbs["meta"])
    txn.delete(stats_key(prefix), db=dbs["meta"])
    txn.delete(pool.encode("utf-8"), db=dbs["pools"])
