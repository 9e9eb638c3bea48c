"""On-disk layout of the LMDB candidate store: key encodings, value codecs and the public result types.

One LMDB environment holds these named databases (all integers big-endian in keys so that a cursor
walks a pool's chunks in order, little-endian in values)::

    meta      b"format" -> u32 FORMAT_VERSION; b"next_pool" -> u64 next pool number;
              b"sketch_df/" + P -> a pool's sketch statistics (see :mod:`gotd.cache.store.sketchstats`)
    pools     pool name (UTF-8) -> JSON pool record (num, uid, count, version, model, dim, dtype, ...)
    ids       P + id, or P + xxh3_128(id) in older pools -> u64 row [+ id] (see :mod:`.idindex`)
    vectors   P + u64 chunk -> rows x dim vector bytes (float32 or float16, little-endian)
    rows      P + u64 chunk -> u32 n, u64[n] row versions, u64[n] xxh64(id), JSON [ids, domains]
    content   P + u64 row -> u32 len(domain), u32 len(meta), u32 len(text) or 0xFFFFFFFF, bytes
    sketches  P + u64 chunk -> float16 n-gram sketch rows (see :mod:`gotd.cache.store.sketch`)
    changes   P + u64 version -> u64[] rows that version wrote (see :mod:`gotd.cache.store.changes`)
    idsets    P + xxh3_128(name) [+ xxh3_128(id)] -> named id sets (see :mod:`gotd.cache.store.idsets`)
    deleted   P + u64 row -> b"" (the row is deleted; see :mod:`gotd.cache.store.deletes`)
    targets   target-set name -> u32 len(header) + JSON header + JSON ids + float32 vectors [+ sketches]
    embcache  u64 xxh3_64(model) + xxh3_128(text) -> float32 vector bytes

``P`` is the pool's number (u64), allocated once and never reused, so a deleted and recreated pool
never meets the rows of its predecessor. Rows are numbered 0..count-1 in insertion order and stored in
chunks of ``chunk_rows`` rows: reading a whole pool is one memcpy per chunk.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import lmdb
import numpy as np

from gotd.cache.sketch_rows import SparseRows
from gotd.cache.store.columns import LabelColumn, TextColumn
from gotd.cache.store.pages import release

FORMAT_VERSION: Final = 1
DATABASES: Final = (
    "meta",
    "pools",
    "ids",
    "vectors",
    "rows",
    "content",
    "targets",
    "embcache",
    "sketches",
    "changes",
    "idsets",
    "deleted",
)
#: Databases newer than format 1: created on the first read-write open, absent from an older store
#: opened read-only (its readers then find no handle for them).
ADDED_DATABASES: Final = frozenset({"sketches", "changes", "idsets", "deleted"})
VECTOR_DTYPES: Final[dict[str, np.dtype[Any]]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
CHUNK_BYTES: Final = 512 * 1024  # target size of one vector chunk

_U64 = struct.Struct(">Q")
_CONTENT = struct.Struct("<III")
_NO_TEXT: Final = 0xFFFFFFFF
_U32 = struct.Struct("<I")


# -- public result types -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A pool's description.

    ``uid`` is random per pool incarnation (a deleted and recreated pool gets a new one), so caches
    keyed by (name, uid, version) never confuse two pools of the same name.
    """

    name: str
    count: int
    version: int
    model: str
    dim: int
    dtype: str = "float32"
    uid: str = ""
    created: float = 0.0
    updated: float = 0.0
    deleted: int = 0  # rows deleted (tombstones); ``count`` includes them

    @property
    def live(self) -> int:
        """Candidates in the pool: its rows but the deleted ones."""
        return self.count - self.deleted


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """Outcome of one upsert batch: per-record counts and the pool version after it.

    ``embedded`` counts texts sent to the encoder (filled in by the ingest pipeline; 0 in the store).
    """

    inserted: int
    updated: int
    unchanged: int
    version: int
    embedded: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class PoolArrays:
    """A consistent snapshot of one pool, row-aligned.

    Attributes
    ----------
    vectors : numpy.ndarray
        Unit vectors, shape ``(n, d)``, C-contiguous; float32, or the pool's storage dtype (float16)
        when loaded with ``upcast=False``.
    ids : TextColumn
        Candidate id of each row (a compact column: a ``str`` is made only for a row read).
    keys : numpy.ndarray
        ``xxh64(id)`` of each row, shape ``(n,)``, uint64: a stable, order-independent hash.
    domains : LabelColumn
        Domain label of each row ("" when none), as codes into the distinct labels.
    row_versions : numpy.ndarray
        Pool version that last wrote each row, shape ``(n,)``, uint64.
    version : int
        Pool version of the snapshot.
    sketches : SparseRows or None
        Hashed n-gram sketch rows aligned with ``vectors``, ``n`` rows of ``buckets`` float16 values in
        compact sparse form (:meth:`~gotd.cache.sketch_rows.SparseRows.compact`); a zero row is "no
        sketch". None when no row has a sketch (the pool keeps none: written by an older gotd or
        by a store without a sketch function; or it stores no sketch row: records without text) or when
        the load did not ask for them.
    deleted : numpy.ndarray or None
        Deleted-row mask, shape ``(n,)``, bool; None when no row is deleted.
    """

    name: str
    version: int
    model: str
    dim: int
    vectors: np.ndarray
    ids: TextColumn
    keys: np.ndarray
    domains: LabelColumn
    row_versions: np.ndarray
    uid: str = ""
    sketches: SparseRows | None = None
    deleted: np.ndarray | None = None

    @property
    def live(self) -> int:
        """Rows not deleted."""
        return len(self.ids) - (0 if self.deleted is None else int(self.deleted.sum()))


@dataclass(frozen=True, slots=True)
class TargetSetInfo:
    """A stored target set: ``content_hash`` = xxh3_128 of the model id and the float32 vectors."""

    name: str
    count: int
    model: str
    dim: int
    content_hash: str
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """What the store holds for one id."""

    id: str
    row: int
    version: int
    domain: str
    meta_json: str
    text: str | None
    vector: np.ndarray


# -- pool records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolRecord:
    """The stored state of a pool (the ``pools`` database value)."""

    name: str
    num: int
    uid: str
    count: int
    version: int
    model: str
    dim: int
    dtype: str
    chunk_rows: int
    created: float
    updated: float
    sketch_buckets: int = 0  # 0: no sketches (pools written before they existed)
    sketch_rows: int = 0  # sketch rows per chunk
    deleted: int = 0  # rows marked deleted (tombstones)
    id_index: int = 0  # key scheme of the pool's ``ids`` entries (:mod:`gotd.cache.store.idindex`)

    def encode(self) -> bytes:
        body = {k: getattr(self, k) for k in self.__slots__ if k != "name"}
        if not self.id_index:  # an older pool's record stays readable by the gotd that wrote it
            del body["id_index"]
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def decode(cls, name: str, raw: bytes | memoryview) -> PoolRecord:
        body: dict[str, Any] = json.loads(bytes(raw))
        return cls(name=name, **body)

    def info(self) -> PoolInfo:
        return PoolInfo(
            name=self.name,
            count=self.count,
            version=self.version,
            model=self.model,
            dim=self.dim,
            dtype=self.dtype,
            uid=self.uid,
            created=self.created,
            updated=self.updated,
            deleted=self.deleted,
        )

    @property
    def prefix(self) -> bytes:
        return _U64.pack(self.num)


def chunk_rows_for(dim: int, dtype: str) -> int:
    """Rows per chunk: a power of two giving chunks of about ``CHUNK_BYTES`` (at least 16 rows)."""
    row_bytes = dim * VECTOR_DTYPES[dtype].itemsize
    rows = 16
    while rows * 2 * row_bytes <= CHUNK_BYTES:
        rows *= 2
    return rows


# -- keys ------------------------------------------------------------------------------------------


def u64_key(prefix: bytes, value: int) -> bytes:
    return prefix + _U64.pack(value)


def u64_keys(prefix: bytes, values: np.ndarray) -> list[bytes]:
    """``[u64_key(prefix, v) for v in values]`` in one vectorised pass."""
    packed = np.empty(len(values), dtype=[("p", "V8"), ("v", ">u8")])
    packed["p"] = np.void(prefix)
    packed["v"] = values
    keys: list[bytes] = np.frombuffer(packed.tobytes(), dtype="V16").tolist()
    return keys


def u64(value: int) -> bytes:
    return _U64.pack(value)


def read_u64(raw: bytes | memoryview) -> int:
    return int(_U64.unpack(bytes(raw))[0])


# -- values ----------------------------------------------------------------------------------------


_EMPTY_CONTENT: Final = _CONTENT.pack(0, 2, _NO_TEXT) + b"{}"


def encode_content(domain: str, meta_json: str, text: str | None) -> bytes:
    if text is None and not domain and meta_json == "{}":
        return _EMPTY_CONTENT
    d = domain.encode("utf-8")
    m = meta_json.encode("utf-8")
    t = b"" if text is None else text.encode("utf-8")
    return _CONTENT.pack(len(d), len(m), _NO_TEXT if text is None else len(t)) + d + m + t


def decode_content(raw: bytes | memoryview) -> tuple[str, str, str | None]:
    data = bytes(raw)
    nd, nm, nt = _CONTENT.unpack_from(data)
    at = _CONTENT.size
    domain = data[at : at + nd].decode("utf-8")
    at += nd
    meta_json = data[at : at + nm].decode("utf-8")
    at += nm
    text = None if nt == _NO_TEXT else data[at : at + nt].decode("utf-8")
    return domain, meta_json, text


@dataclass(slots=True)
class RowChunk:
    """Per-row bookkeeping of one chunk (mutable while a write transaction edits it)."""

    versions: np.ndarray  # (n,) uint64
    keys: np.ndarray  # (n,) uint64
    ids: list[str]
    domains: list[str]

    @classmethod
    def empty(cls) -> RowChunk:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), [], [])

    def encode(self) -> bytes:
        n = len(self.ids)
        names = json.dumps([self.ids, self.domains], ensure_ascii=False, separators=(",", ":"))
        return (
            _U32.pack(n)
            + self.versions.astype("<u8", copy=False).tobytes()
            + self.keys.astype("<u8", copy=False).tobytes()
            + names.encode("utf-8")
        )

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> RowChunk:
        data = memoryview(raw)
        (n,) = _U32.unpack_from(data)
        at = _U32.size
        versions = np.frombuffer(data, dtype="<u8", count=n, offset=at).astype(np.uint64)
        keys = np.frombuffer(data, dtype="<u8", count=n, offset=at + 8 * n).astype(np.uint64)
        ids, domains = json.loads(bytes(data[at + 16 * n :]).decode("utf-8"))
        return cls(versions, keys, ids, domains)

    def grow(self, n: int) -> None:
        """Extend to ``n`` rows (new rows get placeholder values that the caller overwrites)."""
        extra = n - len(self.ids)
        if extra <= 0:
            return
        self.versions = np.concatenate([self.versions, np.zeros(extra, np.uint64)])
        self.keys = np.concatenate([self.keys, np.zeros(extra, np.uint64)])
        self.ids.extend([""] * extra)
        self.domains.extend([""] * extra)


def chunk_parts(rows: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Group sorted pool ``rows`` by chunk of ``size`` rows.

    Yields
    ------
    tuple
        ``(chunk number, positions in rows, rows local to the chunk)`` for every chunk touched.
    """
    chunks = rows // size
    bounds = np.flatnonzero(np.diff(chunks)) + 1
    for part in np.split(np.arange(len(rows)), bounds):
        if len(part):
            chunk = int(chunks[part[0]])
            yield chunk, part, rows[part] - chunk * size


def pool_chunks(
    txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes
) -> Iterator[tuple[int, memoryview | bytes]]:
    """``(chunk number, value)`` of every chunk of a pool (key prefix ``prefix``) in ``db``, in order;
    a value's pages of the memory map are released once the next is asked for (:mod:`.pages`)."""
    with txn.cursor(db=db) as cur:
        ok = cur.set_range(prefix)
        while ok:
            key = cur.key()
            if key[:8] != prefix:
                break
            value = cur.value()
            try:
                yield int.from_bytes(key[8:16], "big"), value
            finally:
                release(value)  # read: its pages of the map leave the resident set
            ok = cur.next()
