"""What the fused cost needs of a pool version, kept per version: whether every row has a sketch, and
the fused rows' factors (IDF weights and inverse norms, :class:`SketchFactors`, 4 bytes a row).

Both are work over the whole pool. Whether every row has a sketch is carried from version to version:
rows not written since a version known complete are complete, so a new version checks only the rows
written since (the change). The factors are computed only when asked for (a solve under the pool's own
IDF): a potential epoch of the fused cost brings its own IDF and never needs them. The cost validation
needs only the IDF weights (:meth:`PoolSketches.idf`, a fifth of the work): the inverse norms follow
only if the chosen setting is a fused one, reusing those weights.
"""

from __future__ import annotations

import numpy as np

from gotd.cache.store.core import PoolArrays
from gotd.server.selection.costs import SketchFactors, complete_sketches
from gotd.server.service.lru import Lru

__all__ = ["PoolSketches"]

_Key = tuple[str, str, int]  # pool name, uid, version


class PoolSketches:
    """Per pool version: sketched or not, and the sketch factors (thread-safe: locked LRUs)."""

    def __init__(self, factor_bytes: int) -> None:
        self._factors: Lru[_Key, SketchFactors] = Lru(factor_bytes, sizeof=lambda f: f.nbytes)
        self._idf: Lru[_Key, np.ndarray] = Lru(256)  # a few KiB each: the IDF before the factors
        self._sketched: Lru[_Key, bool] = Lru(256)
        self._complete_at: Lru[tuple[str, str], int] = Lru(256)  # newest version known complete

    def sketched(self, arrays: PoolArrays) -> bool:
        """Whether every row of the snapshot has a non-zero sketch (checked once per version, over the
        rows written since the newest version known complete when there is one)."""
        key = (arrays.name, arrays.uid, arrays.version)
        known = self._sketched.get(key)
        if known is not None:
            return known
        tf = arrays.sketches
        since = self._complete_at.get(key[:2])
        if tf is None or tf.ndim != 2 or tf.shape[0] != len(arrays.row_versions) or tf.shape[0] == 0:
            known = False
        elif since is not None and since <= arrays.version:
            changed = np.flatnonzero(arrays.row_versions > np.uint64(since))
            known = not len(changed) or complete_sketches(tf[changed])
        else:
            known = complete_sketches(tf)
        self._sketched.put(key, known)
        if known and (since is None or since < arrays.version):
            self._complete_at.put(key[:2], arrays.version)
        return known

    def factors(self, arrays: PoolArrays) -> SketchFactors | None:
        """The version's sketch factors (computed once), None when some row has no sketch."""
        key = (arrays.name, arrays.uid, arrays.version)
        known = self._factors.get(key)
        if known is None and arrays.sketches is not None and self.sketched(arrays):
            known = SketchFactors.of(arrays.sketches, arrays.deleted, self._idf.get(key))
            self._factors.put(key, known)
        return known

    def idf(self, arrays: PoolArrays) -> np.ndarray | None:
        """The version's IDF weights alone (the cost validation's need; its factors' when they are
        computed later), None when some row has no sketch."""
        key = (arrays.name, arrays.uid, arrays.version)
        found = self._factors.get(key)
        if found is not None:
            return found.idf
        known = self._idf.get(key)
        if known is None and arrays.sketches is not None and self.sketched(arrays):
            known = SketchFactors.pool_idf(arrays.sketches, arrays.deleted)
            self._idf.put(key, known)
        return known

    def held(self) -> list[tuple[str, str, int]]:
        """(pool, uid, version) of every version whose factors are held."""
        return list(self._factors.held_keys())

    def forget(self, pool: str) -> None:
        """Drop what is kept of ``pool`` (deleted)."""
        for lru in (self._factors, self._idf, self._sketched, self._complete_at):
            lru.discard_where(lambda key: key[0] == pool)
