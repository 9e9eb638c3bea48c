"""What the fused cost needs of a pool version, kept per version: whether every row has a sketch, and
the fused rows' factors (IDF weights and inverse norms, :class:`SketchFactors`, 4 bytes a row).

Both are work over the whole pool. Whether every row has a sketch is carried from version to version:
rows not written since a version known complete are complete, so a new version checks only the rows
written since (the change). The factors are computed only when asked for (a solve under the pool's own
IDF): a potential epoch of the fused cost brings its own IDF and never needs them. The cost validation
needs only the IDF weights (:meth:`PoolSketches.idf`, a fifth of the work): the inverse norms follow
only if the chosen setting is a fused one, reusing those weights.

A store that keeps a pool's sketch statistics (:mod:`gotd.cache.store.sketchstats`: the document
frequency over the live rows and the zero rows, maintained at every write) answers both the check and
the IDF weights without a pass over the rows, the same values bit for bit; and :meth:`PoolSketches.rows`
reads a few sketch rows of a snapshot loaded without them (the cost validation's sample), so a
validated request need not load the pool's sketch rows unless it chooses a fused setting. A pool written
by an older gotd keeps none: the first check of one of its versions on the rows builds them (one pass,
which also gives the IDF weights) and stores them while the pool is still at that version
(:meth:`Store.put_sketch_stats`), so its next writes keep them and its next requests load lean.
"""

from __future__ import annotations

import logging

import numpy as np

from gotd.cache.errors import FailedPrecondition
from gotd.cache.sketch_rows import SparseRows
from gotd.cache.store.core import PoolArrays, Store
from gotd.cache.store.sketchstats import SketchStats, stats_of
from gotd.server.selection.costs import SketchFactors, complete_sketches
from gotd.server.selection.sketches import idf_from_df
from gotd.server.service.lru import Lru
from gotd.server.service.pools import SnapshotMovedError

__all__ = ["PoolSketches"]


LOG = logging.getLogger(__name__)
_Key = tuple[str, str, int]  # pool name, uid, version


class PoolSketches:
    """Per pool version: sketched or not, and the sketch factors (thread-safe: locked LRUs)."""

    def __init__(self, factor_bytes: int, store: Store | None = None) -> None:
        self._store = store
        self._factors: Lru[_Key, SketchFactors] = Lru(factor_bytes, sizeof=lambda f: f.nbytes)
        self._idf: Lru[_Key, np.ndarray] = Lru(256)  # a few KiB each: the IDF before the factors
        self._sketched: Lru[_Key, bool] = Lru(256)
        self._complete_at: Lru[tuple[str, str], int] = Lru(256)  # newest version known complete

    def sketched(self, arrays: PoolArrays) -> bool:
        """Whether every row of the snapshot has a non-zero sketch (checked once per version: from the
        store's statistics, else over the rows written since the newest version known complete when
        there is one, else over all)."""
        key = (arrays.name, arrays.uid, arrays.version)
        known = self._sketched.get(key)
        if known is None:
            known = self._from_stats(arrays)
        if known is not None:
            return known
        tf = arrays.sketches
        if tf is None:  # not kept: a snapshot loaded without its sketch rows would say nothing
            return False
        built = self._build_stats(arrays, tf)
        if built is not None:
            return built
        since = self._complete_at.get(key[:2])
        if len(tf) != len(arrays.row_versions) or len(tf) == 0:
            known = False
        elif since is not None and since <= arrays.version:
            changed = np.flatnonzero(arrays.row_versions > np.uint64(since))
            known = not len(changed) or complete_sketches(tf.take(changed))
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
        if known is None and self.sketched(arrays):
            known = self._idf.get(key)  # from the statistics the check read or built
            if known is None and arrays.sketches is not None:
                known = SketchFactors.pool_idf(arrays.sketches, arrays.deleted)
                self._idf.put(key, known)
        return known

    def from_store(self, arrays: PoolArrays) -> bool:
        """Whether the version's check, and its IDF weights when every row has a sketch, are known
        without the snapshot's sketch rows (held, or read from the store's statistics)."""
        key = (arrays.name, arrays.uid, arrays.version)
        known = self._sketched.get(key)
        if known is not None and (not known or self._idf.get(key) is not None or self._factors.get(key)):
            return True
        return self._from_stats(arrays) is not None

    def _from_stats(self, arrays: PoolArrays) -> bool | None:
        """The check from the store's statistics of the version (its IDF weights kept when complete:
        what :meth:`SketchFactors.pool_idf` computes from the rows), None when it keeps none."""
        key = (arrays.name, arrays.uid, arrays.version)
        stats = None if self._store is None else self._store.sketch_stats(*key)
        return None if stats is None else self._known(arrays, stats)

    def _build_stats(self, arrays: PoolArrays, tf: SparseRows) -> bool | None:
        """The check from statistics built from the snapshot's rows, stored for the version when the
        store keeps none (an older gotd's pool); None when there is no store to keep them for or the
        rows are not the stored float16 rows of every row."""
        if self._store is None or tf.values.dtype != np.float16 or len(tf) != len(arrays.ids):
            return None
        stats = stats_of(arrays.version, tf, arrays.deleted)
        try:
            kept = self._store.put_sketch_stats(arrays.name, arrays.uid, stats)
        except FailedPrecondition:  # a read-only store: built for this version only
            kept = False
        LOG.info(
            "sketch statistics of %s v%d built from its rows (%s)",
            arrays.name,
            arrays.version,
            "kept" if kept else "the pool moved on, or the store keeps its own: not kept",
        )
        return self._known(arrays, stats)

    def _known(self, arrays: PoolArrays, stats: SketchStats) -> bool:
        key = (arrays.name, arrays.uid, arrays.version)
        n = len(arrays.ids)
        complete = n > 0 and stats.zero_rows == 0
        if complete:
            live = n if arrays.deleted is None else n - int(arrays.deleted.sum())
            self._idf.put(key, idf_from_df(stats.df, live))
            if (self._complete_at.get(key[:2]) or -1) < arrays.version:
                self._complete_at.put(key[:2], arrays.version)
        self._sketched.put(key, complete)
        return complete

    def rows(self, arrays: PoolArrays, rows: np.ndarray) -> np.ndarray:
        """The sketch rows ``rows`` (sorted) of the snapshot: from its array, else from the store while
        the pool is still at the snapshot's version (SnapshotMovedError once it is not)."""
        if arrays.sketches is not None:
            return arrays.sketches.take(np.asarray(rows, dtype=np.int64)).dense()
        found = (
            None
            if self._store is None
            else self._store.sketch_rows(arrays.name, arrays.uid, arrays.version, rows)
        )
        if found is None:
            raise SnapshotMovedError(f"pool {arrays.name!r} moved on from version {arrays.version}")
        return found

    def held(self) -> list[tuple[str, str, int]]:
        """(pool, uid, version) of every version whose factors are held."""
        return list(self._factors.held_keys())

    def forget(self, pool: str) -> None:
        """Drop what is kept of ``pool`` (deleted)."""
        for lru in (self._factors, self._idf, self._sketched, self._complete_at):
            lru.discard_where(lambda key: key[0] == pool)
