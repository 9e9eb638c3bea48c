"""Text → embedding cache in the store's LMDB environment, so no text is ever encoded twice.

Keys are ``xxh3_64(model id) + xxh3_128(normalised text)`` (24 bytes), values the raw little-endian
float32 vector. A text is normalised as Unicode NFC with surrounding whitespace stripped; the encoder
is given the same normalised text, so a cached vector is exactly what the encoder would return.
Entries are shared by every pool and target set embedded with the same model.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Sequence

import lmdb
import numpy as np
import xxhash

from gotd.cache.errors import InvalidArgument
from gotd.cache.store.core import Store

__all__ = ["EmbeddingCache", "cache_key", "normalise_text"]

LOG = logging.getLogger(__name__)


def normalise_text(text: str) -> str:
    """The cache's (and encoder's) form of a text: Unicode NFC, surrounding whitespace stripped."""
    return unicodedata.normalize("NFC", text).strip()


def cache_key(model: str, text: str) -> bytes:
    """Cache key of an already normalised ``text`` under ``model``."""
    return xxhash.xxh3_64_digest(model.encode("utf-8")) + xxhash.xxh3_128_digest(text.encode("utf-8"))


class EmbeddingCache:
    """Embeddings by (model id, normalised text), in the store's environment.

    Parameters
    ----------
    store : Store
        The store whose LMDB environment (and map growth, and writer lock) the cache shares.

    Attributes
    ----------
    hits, misses : int
        Lookups answered and not answered since construction.
    """

    def __init__(self, store: Store) -> None:
        self._env = store.env
        self._db = store.env.dbs["embcache"]
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, model: str, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """Cached vectors of ``texts`` (normalised here), by index into ``texts``.

        Returns
        -------
        dict of int to numpy.ndarray
            ``{i: vector (d,) float32}`` for each cached text; misses are absent.
        """
        if not texts:
            return {}
        keys = [cache_key(model, normalise_text(t)) for t in texts]

        def read(txn: lmdb.Transaction) -> dict[bytes, np.ndarray]:
            with txn.cursor(db=self._db) as cur:
                return {
                    bytes(k): np.frombuffer(v, dtype="<f4").astype(np.float32) for k, v in cur.getmulti(keys)
                }

        found = self._env.read(read)
        out = {i: found[k] for i, k in enumerate(keys) if k in found}
        with self._lock:
            self.hits += len(out)
            self.misses += len(texts) - len(out)
        return out

    def put_many(self, model: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` as the embedding of ``texts[i]`` under ``model`` (one write txn)."""
        matrix = np.ascontiguousarray(vectors, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise InvalidArgument(f"embedding cache: {len(texts)} texts but vectors of shape {matrix.shape}")
        if not texts:
            return
        items = [(cache_key(model, normalise_text(t)), matrix[i].tobytes()) for i, t in enumerate(texts)]

        def write(txn: lmdb.Transaction) -> None:
            with txn.cursor(db=self._db) as cur:
                cur.putmulti(items)

        self._env.write(write)
        LOG.debug("embedding cache: stored %d vectors for %s", len(items), model)

    def __len__(self) -> int:
        def count(txn: lmdb.Transaction) -> int:
            entries: int = txn.stat(self._db)["entries"]
            return entries

        return self._env.read(count)
