"""The id index of a pool (``ids`` database): id -> row, in one of two key schemes named by the pool.

``HASHED`` (pools written before ordered keys existed; ``PoolRecord.id_index`` 0)::

    P + xxh3_128(id) -> u64 row + id (UTF-8)

``ORDERED`` (new pools; ``PoolRecord.id_index`` 1)::

    P + id (UTF-8)                 -> u64 row        ids of up to ORDERED_MAX_BYTES bytes
    P + 0xFF + xxh3_128(id)        -> u64 row + id   longer ids (0xFF is never a byte of UTF-8)

Why two: a hashed key scatters the ids of one batch over the whole B-tree, so a batch of ``b`` new ids
dirties (copies, writes and syncs) about ``min(b, leaves)`` leaf pages, and the leaves grow with the
pool: the commit of a 10k-row batch wrote ~10k pages (40 MiB) once the pool held 1M rows. Ids keyed as
themselves keep the order the ids have: ids allocated in sequence (counters, zero-padded numbers,
timestamps) land on a few neighbouring leaves, so a batch writes pages in proportion to its own size,
whatever the pool's. Random ids (UUIDs) cost what hashed keys cost. A pool keeps the scheme it was
created with (no rewrite of an existing index); an older gotd fails to decode a pool record that names
one (unknown field) rather than misread it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import lmdb
import numpy as np
import xxhash

from gotd.cache.store.layout import PoolRecord

__all__ = ["HASHED", "ORDERED", "ORDERED_MAX_BYTES", "index_keys", "index_values", "lookup_rows"]

HASHED: Final = 0
ORDERED: Final = 1
ORDERED_MAX_BYTES: Final = 256  # LMDB keys are at most 511 bytes; ids may be 512
ABSENT: Final = -1
CLASH: Final = -2  # a hashed key holds another id
_LONG: Final = b"\xff"
_ROW = struct.Struct("<Q")


def _ordered_key(prefix: bytes, raw: bytes) -> bytes:
    if len(raw) <= ORDERED_MAX_BYTES:
        return prefix + raw
    return prefix + _LONG + xxhash.xxh3_128_digest(raw)


def index_keys(pool: PoolRecord, raw_ids: Sequence[bytes]) -> list[bytes]:
    """``ids`` keys of the UTF-8 encoded ids in ``pool``'s scheme."""
    prefix = pool.prefix
    if pool.id_index == ORDERED:
        return [_ordered_key(prefix, raw) for raw in raw_ids]
    return list(map(prefix.__add__, map(xxhash.xxh3_128_digest, raw_ids)))


def index_values(pool: PoolRecord, first_row: int, raw_ids: Sequence[bytes]) -> list[bytes]:
    """``ids`` values of ids written at rows ``first_row, first_row + 1, ...``: the little-endian u64
    row, followed by the id unless the key is the id itself."""
    rows = np.arange(first_row, first_row + len(raw_ids), dtype="<u8")
    packed: list[bytes] = np.frombuffer(rows.tobytes(), dtype="V8").tolist()
    if pool.id_index == ORDERED:
        pairs = zip(packed, raw_ids, strict=True)
        return [row if len(raw) <= ORDERED_MAX_BYTES else row + raw for row, raw in pairs]
    return list(map(bytes.__add__, packed, raw_ids))


def lookup_rows(
    txn: lmdb.Transaction, db: lmdb._Database, pool: PoolRecord, ids: Sequence[str]
) -> tuple[np.ndarray, list[bytes]]:
    """Rows of ``ids`` (int64: ``ABSENT`` when not in the pool, ``CLASH`` when a hashed key holds
    another id) and their keys."""
    raw_ids = [i.encode("utf-8") for i in ids]
    keys = index_keys(pool, raw_ids)
    found = dict(txn.cursor(db=db).getmulti(keys))
    rows = np.full(len(keys), ABSENT, dtype=np.int64)
    for j, key in enumerate(keys):
        value = found.get(key)
        if value is None:
            continue
        data = bytes(value)
        stored = data[_ROW.size :]
        rows[j] = _ROW.unpack_from(data)[0] if not stored or stored == raw_ids[j] else CLASH
    return rows, keys
