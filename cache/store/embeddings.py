"""Text → embedding cache in the store's LMDB environment, so no text is encoded twice while it is used.

Keys are ``generation (1 byte) + xxh3_64(model id) + xxh3_128(normalised text)`` (25 bytes), values the
raw little-endian float32 vector. A text is normalised as Unicode NFC with surrounding whitespace
stripped; the encoder is given the same normalised text, so a cached vector is exactly what the encoder
would return. Entries are shared by every pool and target set embedded with the same model.

The cache is bounded by generations (an approximate LRU): new entries go to the current generation;
a lookup also reads the previous one and copies what it finds there into the current one. When the
current generation holds ``max_entries / 2`` entries, the previous one is deleted and the current one
becomes the previous. So at most about ``max_entries`` entries are kept, and an entry used at least once
per ``max_entries / 2`` insertions is never evicted. LMDB reuses the freed pages, so the file stops
growing once the cache is full; ``gotd compact`` writes a copy without the free pages (a smaller file).
Entries written by an older gotd (24-byte keys) are deleted at the first rotation.
"""

from __future__ import annotations

import logging
import struct
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import lmdb
import numpy as np
import xxhash

from gotd.cache.errors import InvalidArgument
from gotd.cache.store.core import Store

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "EmbeddingCache",
    "EmbeddingCacheStats",
    "cache_key",
    "forget_pool_texts",
    "normalise_text",
]

LOG = logging.getLogger(__name__)
DEFAULT_MAX_ENTRIES = 500_000
"""About 0.8 GB of 384-d float32 vectors with their keys."""

_STATE_KEY = b"\xff:state"  # generations are 0..254, so no entry key starts with 0xff
_STATE = struct.Struct("<BxxxQQ")  # current generation, entries in it, entries evicted so far


def normalise_text(text: str) -> str:
    """The cache's (and encoder's) form of a text: Unicode NFC, surrounding whitespace stripped."""
    return unicodedata.normalize("NFC", text).strip()


def cache_key(model: str, text: str) -> bytes:
    """Cache key of an already normalised ``text`` under ``model``, without the generation byte."""
    return xxhash.xxh3_64_digest(model.encode("utf-8")) + xxhash.xxh3_128_digest(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class EmbeddingCacheStats:
    """Size of the cache: ``entries`` kept (both generations), the bound, and entries evicted so far."""

    entries: int
    max_entries: int
    evicted: int


class EmbeddingCache:
    """Embeddings by (model id, normalised text), in the store's environment, at most ~``max_entries``.

    Parameters
    ----------
    store : Store
        The store whose LMDB environment (and map growth, and writer lock) the cache shares.
    max_entries : int
        Bound on the entries kept (>= 2); see the module docstring for the eviction rule.

    Attributes
    ----------
    hits, misses : int
        Lookups answered and not answered since construction.
    """

    def __init__(self, store: Store, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 2:
            raise ValueError(f"max_entries must be >= 2, got {max_entries}")
        self._env = store.env
        self._db = store.env.dbs["embcache"]
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    # -- state ----------------------------------------------------------------------------------
    def _state(self, txn: lmdb.Transaction) -> tuple[int, int, int]:
        raw = txn.get(_STATE_KEY, db=self._db)
        if raw is None:
            return 0, 0, 0
        gen, count, evicted = _STATE.unpack(bytes(raw))
        return int(gen), int(count), int(evicted)

    def _put_state(self, txn: lmdb.Transaction, gen: int, count: int, evicted: int) -> None:
        txn.put(_STATE_KEY, _STATE.pack(gen, count, evicted), db=self._db)

    # -- reads ----------------------------------------------------------------------------------
    def get_many(self, model: str, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """Cached vectors of ``texts`` (normalised here), by index into ``texts``.

        Entries found in the previous generation are copied into the current one (kept as recent).

        Returns
        -------
        dict of int to numpy.ndarray
            ``{i: vector (d,) float32}`` for each cached text; misses are absent.
        """
        if not texts:
            return {}
        bare = [cache_key(model, normalise_text(t)) for t in texts]

        def read(txn: lmdb.Transaction) -> tuple[int, dict[bytes, bytes]]:
            gen = self._state(txn)[0]
            wanted = [bytes([g]) + k for k in bare for g in (gen, _previous(gen))]
            with txn.cursor(db=self._db) as cur:
                return gen, {bytes(k): bytes(v) for k, v in cur.getmulti(wanted)}

        gen, found = self._env.read(read)
        out: dict[int, np.ndarray] = {}
        stale: dict[bytes, bytes] = {}
        for i, k in enumerate(bare):
            value = found.get(bytes([gen]) + k)
            if value is None:
                value = found.get(bytes([_previous(gen)]) + k)
                if value is None:
                    continue
                stale[k] = value
            out[i] = np.frombuffer(value, dtype="<f4").astype(np.float32)
        if stale:
            self._insert(stale.items())
        with self._lock:
            self.hits += len(out)
            self.misses += len(texts) - len(out)
        return out

    def stats(self) -> EmbeddingCacheStats:
        """Entries kept, the bound, and entries evicted so far."""

        def read(txn: lmdb.Transaction) -> EmbeddingCacheStats:
            entries: int = txn.stat(self._db)["entries"]
            has_state = txn.get(_STATE_KEY, db=self._db) is not None
            return EmbeddingCacheStats(entries - int(has_state), self.max_entries, self._state(txn)[2])

        return self._env.read(read)

    def __len__(self) -> int:
        return self.stats().entries

    # -- writes ---------------------------------------------------------------------------------
    def put_many(self, model: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` as the embedding of ``texts[i]`` under ``model`` (one write txn)."""
        matrix = np.ascontiguousarray(vectors, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise InvalidArgument(f"embedding cache: {len(texts)} texts but vectors of shape {matrix.shape}")
        if not texts:
            return
        items = {cache_key(model, normalise_text(t)): matrix[i].tobytes() for i, t in enumerate(texts)}
        self._insert(items.items())
        LOG.debug("embedding cache: stored %d vectors for %s", len(items), model)

    def forget(self, model: str, texts: Iterable[str]) -> int:
        """Delete the entries of ``texts`` under ``model`` (both generations); returns how many existed.

        Used when a pool is deleted: its texts' embeddings do not outlive it (a pool or target set that
        shares a text encodes it again).
        """
        bare = [cache_key(model, normalise_text(t)) for t in texts]
        if not bare:
            return 0

        def delete(txn: lmdb.Transaction) -> int:
            gen, count, evicted = self._state(txn)
            dropped = 0
            for k in bare:
                if txn.delete(bytes([gen]) + k, db=self._db):
                    dropped += 1
                    count -= 1
                if txn.delete(bytes([_previous(gen)]) + k, db=self._db):
                    dropped += 1
            self._put_state(txn, gen, max(count, 0), evicted)
            return dropped

        return self._env.write(delete)

    def _insert(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        pending = list(items)

        def write(txn: lmdb.Transaction) -> None:
            gen, count, evicted = self._state(txn)
            half = max(1, self.max_entries // 2)
            at = 0
            while at < len(pending):
                if count >= half:
                    evicted += self._rotate(txn, gen)
                    gen, count = _next(gen), 0
                chunk = pending[at : at + half - count]
                prefix = bytes([gen])
                with txn.cursor(db=self._db) as cur:
                    added: int = cur.putmulti([(prefix + k, v) for k, v in chunk], overwrite=True)[1]
                count += added
                at += len(chunk)
            self._put_state(txn, gen, count, evicted)

        self._env.write(write)

    def _rotate(self, txn: lmdb.Transaction, current: int) -> int:
        """Delete every entry outside generation ``current`` (it becomes the previous); returns how many."""
        keep = bytes([current])
        with txn.cursor(db=self._db) as cur:
            going = [bytes(k) for k in cur.iternext(values=False) if bytes(k[:1]) != keep]
        for key in going:
            if key != _STATE_KEY:
                txn.delete(key, db=self._db)
        deleted = len(going) - int(_STATE_KEY in going)
        LOG.info("embedding cache: new generation; evicted %d entries", deleted)
        return deleted


def _previous(gen: int) -> int:
    return (gen - 1) % 255


def _next(gen: int) -> int:
    return (gen + 1) % 255


def forget_pool_texts(store: Store, cache: EmbeddingCache, pool: str, *, chunk: int = 8192) -> int:
    """Delete the cached embeddings of every text stored in ``pool`` (before the pool is deleted)."""
    info = store.get_pool(pool)
    dropped = 0
    for start in range(0, info.count, chunk):
        rows = range(start, min(start + chunk, info.count))
        texts = [text for _domain, _meta, text in store.metadata(pool, rows) if text is not None]
        dropped += cache.forget(info.model, texts)
    return dropped
