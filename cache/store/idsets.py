"""Named id sets of a pool: ids already handed out (to training, say), kept to exclude them later.

One database of the store's environment, keyed under the pool's number ``P`` (so a deleted pool's sets
go with it, :func:`gotd.cache.store.read.delete_pool`, and a recreated pool starts without any)::

    idsets   P + xxh3_128(set name)                     -> JSON {"name", "count", "created", "updated"}
             P + xxh3_128(set name) + xxh3_128(id)      -> id (UTF-8)

One key per id: appending k ids to a set costs k puts, whatever the set's size, and a write is one
LMDB transaction (a set is changed whole or not at all). Ids need not be in the pool: an id set names
candidates, and a candidate deleted or not yet ingested keeps its place in the set.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import lmdb
import xxhash

from gotd.cache.errors import NotFound, ResourceExhausted
from gotd.cache.records import validate_id, validate_name
from gotd.cache.store.env import Env
from gotd.cache.store.layout import PoolRecord
from gotd.cache.store.upsert import read_pool

__all__ = ["DEFAULT_MAX_IDS", "IDSETS_DB", "IdSetInfo", "IdSets"]

IDSETS_DB: Final = "idsets"
DEFAULT_MAX_IDS: Final = 1_000_000
_HEADER_BYTES: Final = 8 + 16
KIND: Final = "id set"


@dataclass(frozen=True, slots=True)
class IdSetInfo:
    """A stored id set: its pool, name and number of ids."""

    pool: str
    name: str
    count: int
    created: float = 0.0
    updated: float = 0.0


def _set_key(prefix: bytes, name: str) -> bytes:
    return prefix + xxhash.xxh3_128_digest(name.encode("utf-8"))


def _member_key(set_key: bytes, record_id: str) -> bytes:
    return set_key + xxhash.xxh3_128_digest(record_id.encode("utf-8"))


class IdSets:
    """The id sets of every pool of one store environment (thread-safe, like the store).

    Parameters
    ----------
    env : Env
        The store's environment (``Store.env``).
    max_ids : int
        Most ids one set may hold; a write past it raises ResourceExhausted and changes nothing.
    """

    def __init__(self, env: Env, *, max_ids: int = DEFAULT_MAX_IDS) -> None:
        self.env = env
        self.max_ids = max_ids

    def _pool(self, txn: lmdb.Transaction, pool: str) -> PoolRecord:
        rec = read_pool(txn, self.env.dbs, validate_name(pool, kind="pool"))
        if rec is None:
            raise NotFound(f"pool {pool!r} does not exist")
        return rec

    def _db(self) -> lmdb._Database:
        db = self.env.dbs.get(IDSETS_DB)
        if db is None:  # an older store opened read-only
            raise NotFound("this store keeps no id sets")
        return db

    def put(self, pool: str, name: str, ids: Iterable[str], *, append: bool = False) -> tuple[IdSetInfo, int]:
        """Replace the set's ids by ``ids`` (or add them, ``append``) in one write transaction.

        Returns the set after the write and the ids written that it did not hold (replace: all).
        Raises NotFound for an absent pool, InvalidArgument for a bad name or id, ResourceExhausted
        past ``max_ids``.
        """
        validate_name(name, kind=KIND)
        unique = list(dict.fromkeys(validate_id(i) for i in ids))
        if len(unique) > self.max_ids:
            raise ResourceExhausted(f"{len(unique)} ids exceed the id set limit of {self.max_ids}")
        db = self._db()

        def write(txn: lmdb.Transaction) -> tuple[IdSetInfo, int]:
            rec = self._pool(txn, pool)
            key = _set_key(rec.prefix, name)
            header = _header(txn, db, key, pool)
            count = 0 if header is None else header.count
            if header is not None and not append:
                _delete_members(txn, db, key)
                count = 0
            added = 0
            for record_id in unique:
                if txn.put(_member_key(key, record_id), record_id.encode("utf-8"), overwrite=False, db=db):
                    added += 1
            count += added
            if count > self.max_ids:  # raising aborts the transaction: nothing is written
                raise ResourceExhausted(
                    f"id set {name!r} of pool {pool!r} would hold {count} ids, over the limit of "
                    f"{self.max_ids}"
                )
            now = time.time()
            created = now if header is None else header.created
            body = {"name": name, "count": count, "created": created, "updated": now}
            txn.put(key, json.dumps(body).encode(), db=db)
            return IdSetInfo(pool, name, count, created, now), added

        return self.env.write(write)

    def get(self, pool: str, name: str) -> tuple[IdSetInfo, list[str]]:
        """The set and its ids, sorted (NotFound for an absent pool or set)."""
        validate_name(name, kind=KIND)
        db = self._db()

        def read(txn: lmdb.Transaction) -> tuple[IdSetInfo, list[str]]:
            key = _set_key(self._pool(txn, pool).prefix, name)
            header = _header(txn, db, key, pool)
            if header is None:
                raise NotFound(f"id set {name!r} of pool {pool!r} does not exist")
            ids = [bytes(v).decode("utf-8") for _k, v in _members(txn, db, key)]
            return header, sorted(ids)

        return self.env.read(read)

    def page(
        self, pool: str, name: str, *, after: str | None, limit: int
    ) -> tuple[IdSetInfo, list[str], bool]:
        """The set, its ``limit`` smallest ids greater than ``after`` (all ids for None), sorted, and
        whether more follow (NotFound for an absent pool or set). One read of the set's members (they
        are keyed by hash, not in id order): O(count log limit)."""
        validate_name(name, kind=KIND)
        db = self._db()

        def read(txn: lmdb.Transaction) -> tuple[IdSetInfo, list[str], bool]:
            key = _set_key(self._pool(txn, pool).prefix, name)
            header = _header(txn, db, key, pool)
            if header is None:
                raise NotFound(f"id set {name!r} of pool {pool!r} does not exist")
            ids = (bytes(v).decode("utf-8") for _k, v in _members(txn, db, key))
            if after is not None:
                ids = (i for i in ids if i > after)
            first = heapq.nsmallest(limit + 1, ids)
            return header, first[:limit], len(first) > limit

        return self.env.read(read)

    def info(self, pool: str, name: str) -> IdSetInfo | None:
        """The set's description, None when it does not exist (NotFound for an absent pool)."""
        validate_name(name, kind=KIND)
        db = self._db()

        def read(txn: lmdb.Transaction) -> IdSetInfo | None:
            header = _header(txn, db, _set_key(self._pool(txn, pool).prefix, name), pool)
            return header

        return self.env.read(read)

    def delete(self, pool: str, name: str) -> None:
        """Delete the set (NotFound for an absent pool or set)."""
        validate_name(name, kind=KIND)
        db = self._db()

        def delete(txn: lmdb.Transaction) -> None:
            key = _set_key(self._pool(txn, pool).prefix, name)
            if not txn.delete(key, db=db):
                raise NotFound(f"id set {name!r} of pool {pool!r} does not exist")
            _delete_members(txn, db, key)

        self.env.write(delete)

    def list(self, pool: str) -> list[IdSetInfo]:
        """Every set of ``pool``, sorted by name (NotFound for an absent pool)."""
        db = self._db()

        def scan(txn: lmdb.Transaction) -> list[IdSetInfo]:
            prefix = self._pool(txn, pool).prefix
            out = []
            with txn.cursor(db=db) as cur:
                ok = cur.set_range(prefix)
                while ok and cur.key()[: len(prefix)] == prefix:
                    if len(cur.key()) == _HEADER_BYTES:
                        out.append(_info(pool, cur.value()))
                    ok = cur.next()
            return out

        return sorted(self.env.read(scan), key=lambda s: s.name)


def _header(txn: lmdb.Transaction, db: lmdb._Database, key: bytes, pool: str) -> IdSetInfo | None:
    raw = txn.get(key, db=db)
    return None if raw is None else _info(pool, raw)


def _info(pool: str, raw: bytes | memoryview) -> IdSetInfo:
    body = json.loads(bytes(raw))
    return IdSetInfo(
        pool, str(body["name"]), int(body["count"]), float(body["created"]), float(body["updated"])
    )


def _members(
    txn: lmdb.Transaction, db: lmdb._Database, key: bytes
) -> Iterable[tuple[bytes | memoryview, bytes | memoryview]]:
    with txn.cursor(db=db) as cur:
        ok = cur.set_range(key + b"\x00")  # past the header key itself
        while ok and cur.key()[: len(key)] == key:
            yield cur.key(), cur.value()
            ok = cur.next()


def _delete_members(txn: lmdb.Transaction, db: lmdb._Database, key: bytes) -> None:
    with txn.cursor(db=db) as cur:
        if not cur.set_range(key + b"\x00"):
            return
        while cur.key()[: len(key)] == key:
            if not cur.delete():
                break
