"""The candidate store: pools of unit vectors with ids and metadata, and named target sets, in LMDB.

One LMDB environment under ``data_dir/lmdb`` (layout in :mod:`gotd.cache.store.layout`). Every upsert
is one write transaction: after a crash (even ``kill -9``) each committed batch is there whole and no
other batch left a trace (LMDB commits with ``sync=True``). Writers are serialised; readers see
consistent snapshots and never block the writer. The map grows by doubling when a write needs it.

Given a sketch function, the store also keeps a hashed n-gram sketch row per candidate and per target
(:mod:`gotd.cache.store.sketch`), computed from the texts before the write transaction opens.

Thread-safe; one :class:`Store` per process and data directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import lmdb
import numpy as np

from gotd.cache.errors import InvalidArgument, NotFound
from gotd.cache.records import Record, check_unique_ids, validate_name
from gotd.cache.store import read as store_read
from gotd.cache.store.backfill import BackfillResult, backfill_sketches
from gotd.cache.store.deletes import DeleteResult, delete_txn
from gotd.cache.store.env import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, Env
from gotd.cache.store.layout import (
    VECTOR_DTYPES,
    PoolArrays,
    PoolInfo,
    PoolRecord,
    StoredRecord,
    TargetSetInfo,
    UpsertResult,
)
from gotd.cache.store.pages import MapReads
from gotd.cache.store.sketch import (
    SKETCH_DB,
    Sketcher,
    batch_sketches,
    decode_target_set,
    decode_target_sketches,
)
from gotd.cache.store.sketchstats import SketchStats, put_stats, read_rows, stats_at
from gotd.cache.store.targetsets import target_set_value
from gotd.cache.store.upsert import upsert_txn
from gotd.cache.store.vectors import batch_matrix, unit_rows

__all__ = [
    "BackfillResult",
    "DeleteResult",
    "PoolArrays",
    "PoolInfo",
    "Sketcher",
    "Store",
    "StoredRecord",
    "TargetSetInfo",
    "UpsertResult",
]

LOG = logging.getLogger(__name__)
INDEX_DIRNAME: Final = "indexes"


def _grown_bytes(base: PoolArrays, grown: PoolArrays) -> int:
    """Bytes of the rows ``grown`` read beyond ``base`` (the rows written since its version)."""
    rows = int(np.count_nonzero(grown.row_versions > np.uint64(base.version)))
    per_row = grown.vectors.itemsize * grown.dim
    sketches = grown.sketches
    if sketches is not None and len(sketches):  # stored sparse: a u16 count, 4 bytes an entry (on average)
        per_row += 2 + 4 * len(sketches.values) // len(sketches)
    return rows * per_row


class Store:
    """LMDB store of candidate pools and target sets.

    Parameters
    ----------
    data_dir : Path
        Data directory; the environment lives in ``data_dir/lmdb`` and FAISS indexes in
        ``data_dir/indexes``.
    map_size : int
        Initial LMDB map size in bytes (grows by doubling as needed).
    max_map_size : int
        Growth limit; a write beyond it raises ResourceExhausted.
    readonly : bool
        Open an existing store read-only.
    vector_dtype : {"float32", "float16"}
        Storage dtype of new pools' vectors (reads always return float32).
    sketcher : callable, optional
        Texts -> sketch rows ``(len(texts), buckets)``, dense or sparse (the server passes
        ``gotd.server.selection.sketches.tf_sparse``;
        ``gotd.cache`` never imports ``gotd.server``). Without it no
        sketches are computed: new pools and target sets keep none, and rows written into a pool that
        keeps sketches get zero rows.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        readonly: bool = False,
        vector_dtype: str = "float32",
        sketcher: Sketcher | None = None,
    ) -> None:
        if vector_dtype not in VECTOR_DTYPES:
            raise InvalidArgument(
                f"vector_dtype must be one of {sorted(VECTOR_DTYPES)}, got {vector_dtype!r}"
            )
        self.data_dir = Path(data_dir)
        self.vector_dtype = vector_dtype
        self.sketcher = sketcher
        self.env = Env(self.data_dir, map_size=map_size, max_map_size=max_map_size, readonly=readonly)
        self._dbs = self.env.dbs
        self._map_reads = MapReads()
        LOG.info("store opened at %s (map %d bytes, readonly=%s)", self.env.path, self.env.map_size, readonly)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the environment; further calls raise FailedPrecondition."""
        self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index_dir(self, pool: str) -> Path:
        """Directory of the FAISS index files of ``pool``."""
        return self.data_dir / INDEX_DIRNAME / validate_name(pool, kind="pool")

    # -- pools ----------------------------------------------------------------------------------
    def upsert(
        self,
        pool: str,
        records: Sequence[Record],
        *,
        model: str,
        dim: int,
        vectors: np.ndarray | None = None,
        dtype: str | None = None,
    ) -> UpsertResult:
        """Insert or update ``records`` in ``pool`` in one write transaction.

        Parameters
        ----------
        pool : str
            Pool name; the pool is created on first use with ``model``, ``dim`` and ``dtype``.
        records : sequence of Record
            Unique ids. Their embeddings are used unless ``vectors`` is given.
        model, dim : str, int
            Embedding model id and dimension; must match an existing pool's.
        vectors : numpy.ndarray, optional
            Embeddings, shape ``(len(records), dim)``; L2-normalised before storing.
        dtype : {"float32", "float16"}, optional
            Storage dtype of a new pool (default: the store's ``vector_dtype``).

        With a sketch function, every written row's sketch is that of its text (a zero row without
        text); the sketches of all records are computed before the write transaction opens.

        Returns
        -------
        UpsertResult
            Counts, and the pool version after the batch: bumped by one when anything changed,
            unchanged when every record was already stored with the same content.

        Raises
        ------
        InvalidArgument
            Bad name, duplicate id, missing/NaN/zero/wrong-dimension embedding (naming the record).
        FailedPrecondition
            The pool exists with another model or dimension.
        """
        validate_name(pool, kind="pool")
        if not records:
            raise InvalidArgument(f"pool {pool!r}: an upsert needs at least one record")
        if dim < 1:
            raise InvalidArgument(f"pool {pool!r}: dim must be >= 1, got {dim}")
        if not model:
            raise InvalidArgument(f"pool {pool!r}: the model id is required")
        ids = check_unique_ids(records)
        matrix = batch_matrix(pool, records, vectors, dim)
        units = unit_rows(matrix, what=f"pool {pool!r}", ids=ids)
        contents = [(r.domain, r.meta_json, r.text) for r in records]
        storage = dtype or self.vector_dtype
        if storage not in VECTOR_DTYPES:
            raise InvalidArgument(f"dtype must be one of {sorted(VECTOR_DTYPES)}, got {storage!r}")
        sketches, width = batch_sketches(self.sketcher, [c[2] for c in contents])
        result = self.env.write(
            lambda txn: upsert_txn(
                txn,
                self._dbs,
                pool,
                ids,
                units,
                contents,
                model=model,
                dim=dim,
                dtype=storage,
                sketches=sketches,
                sketch_width=width,
            )
        )
        LOG.debug(
            "upsert pool=%s inserted=%d updated=%d unchanged=%d version=%d",
            pool,
            result.inserted,
            result.updated,
            result.unchanged,
            result.version,
        )
        return result

    def get_pool(self, name: str) -> PoolInfo:
        """The pool's count, version, model, dim (NotFound when absent)."""
        return self.env.read(lambda txn: store_read.require_pool(txn, self._dbs, name).info())

    def list_pools(self) -> list[PoolInfo]:
        """All pools, sorted by name."""

        def scan(txn: lmdb.Transaction) -> list[PoolInfo]:
            with txn.cursor(db=self._dbs["pools"]) as cur:
                return [PoolRecord.decode(bytes(k).decode("utf-8"), v).info() for k, v in cur]

        return sorted(self.env.read(scan), key=lambda p: p.name)

    def delete_pool(self, name: str) -> None:
        """Delete a pool, its rows and its FAISS index (NotFound when absent)."""
        self.env.write(lambda txn: store_read.delete_pool(txn, self._dbs, name))
        shutil.rmtree(self.index_dir(name), ignore_errors=True)
        LOG.info("deleted pool %s", name)

    def backfill_sketches(
        self, pool: str, *, batch_rows: int = 4096, progress: Callable[[int, int], None] | None = None
    ) -> BackfillResult:
        """Sketch the rows of ``pool`` that have a stored text and no sketch, in batches of
        ``batch_rows`` (crash-safe, idempotent, safe beside a server; details, the version bump and
        the errors in :func:`gotd.cache.store.backfill.backfill_sketches`).
        """
        return backfill_sketches(self.env, self.sketcher, pool, batch_rows=batch_rows, progress=progress)

    # -- reads ----------------------------------------------------------------------------------
    def load_vectors(
        self, pool: str, *, sketches: bool = True, upcast: bool = True, base: PoolArrays | None = None
    ) -> PoolArrays:
        """A consistent snapshot of the whole pool as row-aligned arrays (see :class:`PoolArrays`).

        The vectors (and sketches, unless ``sketches=False``) are read with one copy per chunk straight
        from the memory map; float32 unless ``upcast=False``, which keeps the storage dtype. ``base``,
        an earlier load with the same options, grows by the rows written since when it can (changes.py).
        The map's pages leave the resident set after a whole load, and after grown ones once they have
        read ``pages.GROWN_BYTES`` of rows (:class:`~gotd.cache.store.pages.MapReads`).
        """
        started = time.perf_counter()
        load = store_read.load_grown
        arrays, whole = self.env.read(
            lambda txn: load(txn, self._dbs, pool, base, sketches=sketches, upcast=upcast), buffers=True
        )
        if self._map_reads.read(0 if whole or base is None else _grown_bytes(base, arrays), whole=whole):
            self.env.release_pages()  # the chunks' pages left as they were read; this takes the rest
        LOG.debug("loaded pool %s: %d rows in %.3f s", pool, len(arrays.ids), time.perf_counter() - started)
        return arrays

    def sketch_stats(self, pool: str, uid: str, version: int) -> SketchStats | None:
        """The sketch statistics of ``pool`` at incarnation ``uid`` and ``version`` (None when the pool
        has moved on or they are not kept: :mod:`gotd.cache.store.sketchstats`)."""
        return self.env.read(lambda txn: stats_at(txn, self._dbs, self._record(txn, pool), uid, version))

    def put_sketch_stats(self, pool: str, uid: str, stats: SketchStats) -> bool:
        """Keep ``stats``, computed from the rows of ``pool`` at ``uid`` and ``stats.version``, if it is
        still there and keeps none (:func:`~gotd.cache.store.sketchstats.put_stats`); whether it did."""
        return self.env.write(
            lambda txn: put_stats(txn, self._dbs["meta"], self._record(txn, pool), uid, stats)
        )

    def sketch_rows(self, pool: str, uid: str, version: int, rows: np.ndarray) -> np.ndarray | None:
        """The stored sketch rows ``rows`` (sorted) of ``pool`` while it is at incarnation ``uid`` and
        ``version`` with its statistics kept (the rows they describe), else None."""

        def read(txn: lmdb.Transaction) -> np.ndarray | None:
            record = self._record(txn, pool)
            if record is None or stats_at(txn, self._dbs, record, uid, version) is None:
                return None
            return read_rows(txn, self._dbs[SKETCH_DB], record, np.asarray(rows, dtype=np.int64))

        return self.env.read(read, buffers=True)  # the rows are copied out, never their chunks

    def _record(self, txn: lmdb.Transaction, pool: str) -> PoolRecord | None:
        raw = txn.get(pool.encode("utf-8"), db=self._dbs["pools"])
        return None if raw is None else PoolRecord.decode(pool, bytes(raw))

    def delete_records(self, pool: str, ids: Sequence[str]) -> DeleteResult:
        """Mark the rows of ``ids`` deleted in one write transaction (tombstones: see
        :mod:`gotd.cache.store.deletes`); ids not in the pool are counted, not an error."""
        if not ids:
            raise InvalidArgument(f"pool {pool!r}: a delete needs at least one id")
        return self.env.write(
            lambda txn: delete_txn(txn, self._dbs, store_read.require_pool(txn, self._dbs, pool), ids)
        )

    def rows_for_ids(self, pool: str, ids: Sequence[str]) -> np.ndarray:
        """Rows (int64, in the order of ``ids``) of the given ids; NotFound naming missing ids."""
        return self.env.read(lambda txn: store_read.rows_for_ids(txn, self._dbs, pool, ids))

    def metadata(self, pool: str, rows: Sequence[int] | np.ndarray) -> list[tuple[str, str, str | None]]:
        """``(domain, meta_json, text or None)`` of each row, in the order given."""
        return self.env.read(lambda txn: store_read.metadata(txn, self._dbs, pool, rows))

    def ids_for_rows(self, pool: str, rows: Sequence[int] | np.ndarray) -> list[str]:
        """Ids of ``rows``, in the order given."""
        return self.env.read(lambda txn: store_read.ids_for_rows(txn, self._dbs, pool, rows))

    def get_records(self, pool: str, ids: Sequence[str]) -> dict[str, StoredRecord]:
        """What is stored for each of ``ids`` that exists (absent ids, or an absent pool: left out)."""
        validate_name(pool, kind="pool")
        return self.env.read(lambda txn: store_read.get_records(txn, self._dbs, pool, ids))

    # -- target sets ----------------------------------------------------------------------------
    def put_target_set(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        model: str,
        dim: int,
        texts: Sequence[str | None] | None = None,
    ) -> TargetSetInfo:
        """Store (or replace) a named target set of unit vectors.

        Parameters
        ----------
        name : str
            Target-set name.
        ids : sequence of str
            Unique target ids.
        vectors : numpy.ndarray
            Shape ``(len(ids), dim)``; L2-normalised before storing.
        texts : sequence of str or None, optional
            The targets' texts: with a sketch function, their sketches are stored too
            (:meth:`get_target_sketches`). They do not enter the content hash.

        Returns
        -------
        TargetSetInfo
            With ``content_hash`` = xxh3_128(model id + float32 vector bytes).
        """
        info, value = target_set_value(
            name, ids, vectors, model=model, dim=dim, texts=texts, sketcher=self.sketcher
        )
        self.env.write(lambda txn: txn.put(name.encode("utf-8"), value, db=self._dbs["targets"]))
        return info

    def get_target_set(self, name: str) -> tuple[TargetSetInfo, list[str], np.ndarray]:
        """``(info, ids, vectors (m, d) float32)`` of a stored target set (NotFound when absent)."""
        return self.env.read(lambda txn: decode_target_set(name, self._target_raw(txn, name)))

    def get_target_sketches(self, name: str) -> np.ndarray | None:
        """Sketch rows ``(m, buckets)`` float16 of a stored target set, aligned with its ids; None when
        it was stored without (no texts or no sketch function). NotFound when absent."""
        return self.env.read(lambda txn: decode_target_sketches(self._target_raw(txn, name)))

    def _target_raw(self, txn: lmdb.Transaction, name: str) -> bytes:
        raw = txn.get(validate_name(name, kind="target set").encode("utf-8"), db=self._dbs["targets"])
        if raw is None:
            raise NotFound(f"target set {name!r} does not exist")
        return bytes(raw)

    def list_target_sets(self) -> list[TargetSetInfo]:
        """All target sets, sorted by name."""

        def scan(txn: lmdb.Transaction) -> list[TargetSetInfo]:
            with txn.cursor(db=self._dbs["targets"]) as cur:
                return [decode_target_set(bytes(k).decode("utf-8"), v)[0] for k, v in cur]

        return sorted(self.env.read(scan), key=lambda t: t.name)

    def delete_target_set(self, name: str) -> None:
        """Delete a target set (NotFound when absent)."""
        validate_name(name, kind="target set")

        def delete(txn: lmdb.Transaction) -> None:
            if not txn.delete(name.encode("utf-8"), db=self._dbs["targets"]):
                raise NotFound(f"target set {name!r} does not exist")

        self.env.write(delete)
