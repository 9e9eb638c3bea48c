"""The upsert of one batch into a pool, inside one LMDB write transaction.

Records whose id is new get the next rows; records whose id exists are compared with what is stored
(vector bytes in the storage dtype, domain, canonical meta JSON, text) and rewritten only when
something differs. When anything changed the pool version goes up by exactly one and every written row
records that version; when nothing changed the transaction is rolled back and the version stays. A
deleted record's row (:mod:`gotd.cache.store.deletes`) is always rewritten, which revives it.

A pool that keeps sketches (:mod:`gotd.cache.store.sketch`) gets the sketch row of every written row in
the same transaction: the batch's row when the batch has sketches of the pool's width, a zero row ("no
sketch") otherwise. A pool is created keeping sketches when its first batch has them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

import lmdb
import numpy as np
import xxhash

from gotd.cache.errors import FailedPrecondition
from gotd.cache.sketch_rows import SparseRows
from gotd.cache.store.changes import log_change
from gotd.cache.store.env import Abort
from gotd.cache.store.idindex import CLASH, ORDERED, index_keys, index_values, lookup_rows
from gotd.cache.store.layout import (
    VECTOR_DTYPES,
    PoolRecord,
    RowChunk,
    UpsertResult,
    chunk_parts,
    chunk_rows_for,
    encode_content,
    read_u64,
    u64,
    u64_key,
    u64_keys,
)
from gotd.cache.store.sketch import SKETCH_DB, SKETCH_DTYPE, write_sketch_rows
from gotd.cache.store.sketchstats import SketchStats, keep_stats, zero_count
from gotd.cache.store.tombstones import deleted_of, undelete

LOG = logging.getLogger(__name__)
Content = tuple[str, str, str | None]  # domain, canonical meta JSON, text


def read_pool(txn: lmdb.Transaction, dbs: dict[str, lmdb._Database], name: str) -> PoolRecord | None:
    raw = txn.get(name.encode("utf-8"), db=dbs["pools"])
    return None if raw is None else PoolRecord.decode(name, raw)


def _new_pool(
    txn: lmdb.Transaction,
    dbs: dict[str, lmdb._Database],
    name: str,
    model: str,
    dim: int,
    dtype: str,
    sketch_buckets: int,
) -> PoolRecord:
    raw = txn.get(b"next_pool", db=dbs["meta"])
    num = 1 if raw is None else read_u64(raw)
    txn.put(b"next_pool", u64(num + 1), db=dbs["meta"])
    now = time.time()
    return PoolRecord(
        name=name,
        num=num,
        uid=uuid.uuid4().hex,
        count=0,
        version=0,
        model=model,
        dim=dim,
        dtype=dtype,
        chunk_rows=chunk_rows_for(dim, dtype),
        created=now,
        updated=now,
        sketch_buckets=sketch_buckets,
        sketch_rows=chunk_rows_for(sketch_buckets, SKETCH_DTYPE.name) if sketch_buckets else 0,
        id_index=ORDERED,
    )


class _Chunks:
    """Vector and row chunks of one pool read at most once per transaction and written back once."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database], pool: PoolRecord) -> None:
        self.txn = txn
        self.dbs = dbs
        self.pool = pool
        self.dtype = VECTOR_DTYPES[pool.dtype]
        self.prefix = pool.prefix
        self.vectors: dict[int, np.ndarray] = {}
        self.rows: dict[int, RowChunk] = {}

    def vector_chunk(self, chunk: int) -> np.ndarray:
        found = self.vectors.get(chunk)
        if found is None:
            raw = self.txn.get(u64_key(self.prefix, chunk), db=self.dbs["vectors"])
            if raw is None:
                found = np.zeros((0, self.pool.dim), dtype=self.dtype)
            else:
                found = np.frombuffer(raw, dtype=self.dtype).reshape(-1, self.pool.dim).copy()
            self.vectors[chunk] = found
        return found

    def row_chunk(self, chunk: int) -> RowChunk:
        found = self.rows.get(chunk)
        if found is None:
            raw = self.txn.get(u64_key(self.prefix, chunk), db=self.dbs["rows"])
            found = RowChunk.empty() if raw is None else RowChunk.decode(raw)
            self.rows[chunk] = found
        return found

    def write_rows(
        self,
        rows: np.ndarray,
        vectors: np.ndarray,
        ids: Sequence[str],
        domains: Sequence[str],
        hashes: np.ndarray,
        version: int,
    ) -> None:
        """Write ``vectors[i]``, ``ids[i]`` (``hashes[i]`` = its xxh64) etc. at pool row ``rows[i]``.

        ``rows`` are sorted ascending.
        """
        for chunk, part, local in chunk_parts(rows, self.pool.chunk_rows):
            need = int(local.max()) + 1
            vec = self.vector_chunk(chunk)
            if len(vec) < need:
                grown = np.zeros((need, self.pool.dim), dtype=self.dtype)
                grown[: len(vec)] = vec
                vec = grown
            meta = self.row_chunk(chunk)
            meta.grow(need)
            meta.versions[local] = version
            first, stop = int(part[0]), int(part[-1]) + 1  # ``part`` is a run of positions
            low = int(local[0])
            if need - low == len(local):  # and ``local`` a run of rows (appended rows): slices
                vec[low:need] = vectors[first:stop]
                meta.keys[low:need] = hashes[first:stop]
                meta.ids[low:need] = ids[first:stop]
                meta.domains[low:need] = domains[first:stop]
            else:
                vec[local] = vectors[part]
                meta.keys[local] = hashes[part]
                for j, i in zip(local.tolist(), part.tolist(), strict=True):
                    meta.ids[j] = ids[i]
                    meta.domains[j] = domains[i]
            self.vectors[chunk] = vec
            key = u64_key(self.prefix, chunk)
            self.txn.put(key, vec.tobytes(), db=self.dbs["vectors"])
            self.txn.put(key, meta.encode(), db=self.dbs["rows"])


def _encode_contents(contents: Sequence[Content]) -> list[bytes]:
    """Encoded contents; the text-less ones (often one value per domain) are encoded once each."""
    memo: dict[tuple[str, str], bytes] = {}
    out = []
    for domain, meta_json, text in contents:
        if text is None:
            value = memo.get((domain, meta_json))
            if value is None:
                value = memo[domain, meta_json] = encode_content(domain, meta_json, None)
            out.append(value)
        else:
            out.append(encode_content(domain, meta_json, text))
    return out


def upsert_txn(
    txn: lmdb.Transaction,
    dbs: dict[str, lmdb._Database],
    name: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    contents: Sequence[Content],
    *,
    model: str,
    dim: int,
    dtype: str,
    sketches: SparseRows | None = None,
    sketch_width: int = 0,
) -> UpsertResult:
    """Upsert ``ids`` with unit ``vectors`` (n, dim) float32 and ``contents`` into pool ``name``.

    ``sketches`` (n rows of ``buckets``) are the records' sketch rows (None: zero rows, e.g. no record
    has a text); ``sketch_width`` is their width (a pool created by the batch keeps sketches when > 0).

    Raises
    ------
    FailedPrecondition
        When the pool exists with another model or dimension.
    Abort
        Carrying the result, when nothing changed (the transaction is rolled back).
    """
    pool = read_pool(txn, dbs, name)
    if pool is None:
        width = sketch_width if SKETCH_DB in dbs else 0
        pool = _new_pool(txn, dbs, name, model, dim, dtype, width)
        created = True
    else:
        created = False
        if pool.model != model or pool.dim != dim:
            raise FailedPrecondition(
                f"pool {name!r} holds {pool.model} embeddings (dim {pool.dim}); "
                f"this batch has {model} (dim {dim})"
            )
    chunks = _Chunks(txn, dbs, pool)
    stored = vectors.astype(chunks.dtype, copy=False)
    prefix = pool.prefix
    raw_ids = [i.encode("utf-8") for i in ids]
    if created:
        keys, at = index_keys(pool, raw_ids), np.full(len(ids), -1, dtype=np.int64)
    else:
        at, keys = lookup_rows(txn, dbs["ids"], pool, ids)
    if (at == CLASH).any():
        clash = ids[int(np.flatnonzero(at == CLASH)[0])]
        raise FailedPrecondition(f"pool {name!r}: id {clash!r} shares its hash with another stored id")
    new_idx: list[int] = np.flatnonzero(at < 0).tolist()
    old_idx: list[int] = np.flatnonzero(at >= 0).tolist()
    old_rows: list[int] = at[old_idx].tolist()
    encoded = _encode_contents(contents)
    changed_idx: list[int] = []
    changed_rows: list[int] = []
    dead_rows: list[int] = []  # deleted rows written again (revived)
    if old_idx:
        content_keys = u64_keys(prefix, np.asarray(old_rows, dtype=np.uint64))
        old_content = dict(txn.cursor(db=dbs["content"]).getmulti(content_keys))
        dead = deleted_of(txn, dbs, pool, np.asarray(old_rows, dtype=np.int64))  # revived when written
        for i, row, ckey, gone in zip(old_idx, old_rows, content_keys, dead.tolist(), strict=True):
            chunk, local = divmod(row, pool.chunk_rows)
            vec = chunks.vector_chunk(chunk)
            same = (
                not gone
                and old_content.get(ckey) == encoded[i]
                and local < len(vec)
                and vec[local].tobytes() == stored[i].tobytes()
            )
            if not same:
                changed_idx.append(i)
                changed_rows.append(row)
                if gone:
                    dead_rows.append(row)
    if not new_idx and not changed_idx:
        raise Abort(UpsertResult(inserted=0, updated=0, unchanged=len(ids), version=pool.version))
    version = pool.version + 1
    new_rows = list(range(pool.count, pool.count + len(new_idx)))
    write_idx = np.asarray(changed_idx + new_idx, dtype=np.int64)
    write_rows = np.asarray(changed_rows + new_rows, dtype=np.int64)
    order = np.argsort(write_rows, kind="stable")
    write_idx, write_rows = write_idx[order], write_rows[order]
    everyone = len(write_idx) == len(ids) and bool((write_idx == np.arange(len(ids))).all())  # no picking
    picked = write_idx.tolist()
    domains = [c[0] for c in contents]
    hashes = np.fromiter(map(xxhash.xxh64_intdigest, raw_ids), dtype=np.uint64, count=len(raw_ids))
    chunks.write_rows(
        write_rows,
        stored if everyone else stored[write_idx],
        ids if everyone else list(map(ids.__getitem__, picked)),
        domains if everyone else list(map(domains.__getitem__, picked)),
        hashes if everyone else hashes[write_idx],
        version,
    )
    if pool.sketch_buckets:
        values = _sketch_values(pool, sketches, sketch_width, None if everyone else write_idx)
        old = write_sketch_rows(txn, dbs[SKETCH_DB], pool, write_rows, values)
        _keep_stats(txn, dbs["meta"], pool, version, created, write_rows, old, values, dead_rows)
    log_change(txn, dbs, pool, version, write_rows)
    revived = undelete(txn, dbs, pool, np.asarray(changed_rows, dtype=np.int64))
    content_keys = u64_keys(prefix, write_rows.astype(np.uint64))
    with txn.cursor(db=dbs["content"]) as cur:
        written = encoded if everyone else list(map(encoded.__getitem__, picked))
        cur.putmulti(list(zip(content_keys, written, strict=True)))
    if new_idx:
        new_keys = keys if len(new_idx) == len(ids) else list(map(keys.__getitem__, new_idx))
        new_raw = raw_ids if len(new_idx) == len(ids) else list(map(raw_ids.__getitem__, new_idx))
        with txn.cursor(db=dbs["ids"]) as cur:
            cur.putmulti(list(zip(new_keys, index_values(pool, pool.count, new_raw), strict=True)))
    pool = replace(
        pool,
        count=pool.count + len(new_idx),
        version=version,
        updated=time.time(),
        deleted=pool.deleted - revived,
    )
    txn.put(name.encode("utf-8"), pool.encode(), db=dbs["pools"])
    return UpsertResult(  # a revived (deleted, then written again) record counts as inserted
        inserted=len(new_idx) + revived,
        updated=len(changed_idx) - revived,
        unchanged=len(ids) - len(new_idx) - len(changed_idx),
        version=version,
    )


def _keep_stats(
    txn: lmdb.Transaction,
    meta: lmdb._Database,
    pool: PoolRecord,
    version: int,
    created: bool,
    rows: np.ndarray,
    old: SparseRows,
    values: SparseRows | None,
    dead: list[int],
) -> None:
    """The pool's sketch statistics after writing ``values`` (None: zero rows) to ``rows`` (their
    sketches were ``old``; the rows in ``dead`` were deleted, so not in the document frequency)."""
    existing = rows < pool.count
    live = existing & ~np.isin(rows, np.asarray(dead, dtype=np.int64)) if dead else existing
    written = len(rows) if values is None else zero_count(values)
    keep_stats(
        txn,
        meta,
        pool,
        version,
        start=SketchStats.empty(pool.version, 0, pool.sketch_buckets) if created else None,
        removed=old.take(np.flatnonzero(live)),
        added=values,
        zeros=written - zero_count(old.take(np.flatnonzero(existing))),
    )


def _sketch_values(
    pool: PoolRecord, sketches: SparseRows | None, width: int, picked: np.ndarray | None
) -> SparseRows | None:
    """The batch's sketch rows ``picked`` (None: all, in order) for ``pool``; None (zero rows) when it
    has none of the pool's width."""
    if width and width != pool.sketch_buckets:
        LOG.warning(
            "pool %r keeps sketches of %d buckets, this batch has %d: its rows are stored without",
            pool.name,
            pool.sketch_buckets,
            width,
        )
        return None
    if sketches is None or picked is None:
        return sketches
    return sketches.take(picked)
