"""Pool snapshots in memory: bounded in bytes, one load per (pool, version) however many requests wait;
a new version's snapshot grows from the newest one held when it fits in that one's spare rows
(:mod:`gotd.cache.store.changes`), and a snapshot with sketch rows is the one without them plus its
sketch rows: a load never holds a second copy of the pool's rows (besides a request still reading
an older version).

A snapshot keeps the pool's vectors in their storage dtype (float16 pools stay float16; the OT passes
upcast one block at a time), its sketch rows, keys, row versions, ids and domains.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from gotd.cache.errors import InvalidArgument, NotFound
from gotd.cache.store.buffers import has_room
from gotd.cache.store.core import PoolArrays, PoolInfo, Store
from gotd.server.selection.sketches import SKETCH_BUCKETS
from gotd.server.service.lru import Lru

__all__ = [
    "PoolSnapshots",
    "SnapshotMovedError",
    "in_snapshot",
    "job_positions",
    "live_rows",
    "score_bytes",
    "select_bytes",
    "snapshot_bytes",
]

#: Working bytes of a Select per candidate: f (float32), its float64 calibrated gradient, the float32
#: scores and their cached copy, the eligibility mask, top-k's row and partition indices.
SELECT_BYTES_PER_ROW = 4 + 8 + 4 + 4 + 1 + 8 + 8
#: Bytes per returned candidate: its (row, score) pair and its place in the streamed batches.
RANKED_BYTES_PER_ROW = 160
#: Bytes per candidate of a snapshot besides its vectors and sketches: key, row version, the id's offset
#: and UTF-8 bytes (a 16-byte id), the domain's code.
_ROW_BYTES = 8 + 8 + 8 + 16 + 4

#: Bytes per candidate of a snapshot's sketch rows, kept sparse (8 bytes of row pointer, 4 an entry), for
#: the admission estimate: a quarter of the buckets set on average (texts of a few hundred words; wiki
#: extracts set about 90 of 1,024), half the dense float16 row.
_SKETCH_ROW_BYTES = 8 + 4 * SKETCH_BUCKETS // 4


def snapshot_bytes(arrays: PoolArrays) -> int:
    """Bytes a snapshot holds: its arrays and its id and domain columns."""
    total = arrays.vectors.nbytes + arrays.keys.nbytes + arrays.row_versions.nbytes
    if arrays.sketches is not None:
        total += arrays.sketches.nbytes
    return int(total + arrays.ids.nbytes + arrays.domains.nbytes)


def select_bytes(info: PoolInfo, k: int, *, sketches: bool, loaded: bool) -> int:
    """Estimated peak bytes of a Select on ``info`` returning ``k`` rows (and the load unless ``loaded``)."""
    n = info.count
    need = n * SELECT_BYTES_PER_ROW + min(k, n) * RANKED_BYTES_PER_ROW
    if not loaded:
        itemsize = 2 if info.dtype == "float16" else 4
        need += n * (info.dim * itemsize + _ROW_BYTES + (_SKETCH_ROW_BYTES if sketches else 0))
    return need


class SnapshotMovedError(Exception):
    """The pool was written since a snapshot loaded without sketch rows, which can no longer be read
    for it (the request starts again on a new snapshot)."""


class PoolSnapshots:
    """The pools read last, keyed by (name, uid, version, with sketches), at most ``limit_bytes`` together.

    Concurrent requests for a pool that is not in memory share one load (the first loads, the others
    wait for its result), so a burst of cold requests costs one read and one copy of the pool.
    """

    def __init__(self, store: Store, limit_bytes: int) -> None:
        self._store = store
        self._items: Lru[tuple[str, str, int, bool], PoolArrays] = Lru(limit_bytes, sizeof=snapshot_bytes)
        self._loading: dict[tuple[str, str, int, bool], Future[PoolArrays]] = {}
        self._guard = threading.Lock()
        self.loads = 0  # reads from the store
        self.waiting = 0  # requests waiting for another one's load

    def cached(self, info: PoolInfo, *, sketches: bool) -> bool:
        """Whether a snapshot of this pool version (with sketches when asked) is in memory."""
        keys = [(info.name, info.uid, info.version, s) for s in (True, sketches)]
        return any(self._items.get(key) is not None for key in keys)

    def get(self, pool: str, *, sketches: bool = True) -> PoolArrays:
        """The pool's snapshot; ``sketches=False``: one without sketch rows will do."""
        info = self._store.get_pool(pool)
        for with_sketches in (True, sketches):
            found = self._items.get((pool, info.uid, info.version, with_sketches))
            if found is not None:
                return found
        key = (pool, info.uid, info.version, sketches)
        with self._guard:
            pending = self._loading.get(key)
            owner = pending is None
            if pending is None:
                pending = self._loading[key] = Future()
        if not owner:
            with self._guard:
                self.waiting += 1
            try:
                return pending.result()
            finally:
                with self._guard:
                    self.waiting -= 1
        try:
            base = self._base(info, sketches)
            kept = None if base is None else (base.uid, base.version)
            # older versions serve no new request: they leave before the new one is read (but the
            # one it grows from), and that one once it is read
            self._items.discard_where(lambda k: k[0] == pool and k[1:3] not in (key[1:3], kept))
            arrays = self._store.load_vectors(pool, sketches=sketches, upcast=False, base=base)
            self.loads += base is None or base.version == arrays.version
            self._items.put((pool, arrays.uid, arrays.version, sketches), arrays)
            # a snapshot with sketch rows serves the requests without: one copy of the rows is held
            self._items.discard_where(
                lambda k: k[0] == pool and (k[1:3] != (arrays.uid, arrays.version) or (sketches and not k[3]))
            )
            pending.set_result(arrays)
        except BaseException as err:
            pending.set_exception(err)
            raise
        finally:
            with self._guard:
                del self._loading[key]
        return arrays

    def with_sketches(self, arrays: PoolArrays) -> PoolArrays:
        """The snapshot ``arrays`` with its sketch rows (SnapshotMovedError when the pool moved on)."""
        full = self.get(arrays.name, sketches=True)
        if (full.uid, full.version) != (arrays.uid, arrays.version):
            raise SnapshotMovedError(f"pool {arrays.name!r} moved on from version {arrays.version}")
        return full

    def _base(self, info: PoolInfo, sketches: bool) -> PoolArrays | None:
        """The snapshot held that the new one is made from, without a second copy of the pool's rows:

        - asking for sketch rows, the snapshot of this version without them (its arrays are kept, the
          sketch rows read beside them);
        - else the newest snapshot of an earlier version of this pool incarnation when the new version
          fits in its buffers' spare rows (:mod:`gotd.cache.store.buffers`): it grows by the rows
          written since, read from the store's change log. A version that does not fit is read whole
          after the older snapshots leave, so the pool is never held twice while it loads.
        """
        if sketches:
            same = self._items.get((info.name, info.uid, info.version, False))
            if same is not None:
                return same
        older = [
            key
            for key in self._items.held_keys()
            if key[0] == info.name and key[1] == info.uid and key[3] == sketches and key[2] < info.version
        ]
        base = self._items.get(max(older, key=lambda key: key[2])) if older else None
        if base is None or not has_room(base.vectors, info.count):
            return None
        return base  # sparse sketch rows grow by a copy (SparseRows.replaced)

    @property
    def size_bytes(self) -> int:
        return int(self._items.size)

    def forget(self, pool: str) -> None:
        self._items.discard_where(lambda key: key[0] == pool)


def score_bytes(scores: np.ndarray) -> int:
    """Bytes of a cached score vector."""
    return int(scores.nbytes)


def in_snapshot(arrays: PoolArrays, ids: Sequence[str], rows: np.ndarray) -> bool:
    """Whether ``rows`` (read after ``arrays``) name the same ids in the snapshot ``arrays``.

    Rows are append-only and an id keeps its row, so a row past the snapshot is an id added since, and
    a different id at a row is a pool replaced since: either way the request needs a newer snapshot.
    """
    n = len(arrays.ids)
    return all(0 <= r < n and arrays.ids[r] == cid for cid, r in zip(ids, rows.tolist(), strict=True))


def live_rows(arrays: PoolArrays, domains: Sequence[str]) -> np.ndarray:
    """Sorted rows of a request: the pool's rows but the deleted ones, in ``domains`` when given.

    Deleted rows take no part in the solve (the pool marginal, a global summary), the calibration sum
    or any ranking. InvalidArgument when no row is left.
    """
    keep = np.ones(len(arrays.ids), dtype=bool) if arrays.deleted is None else ~arrays.deleted
    if domains:
        keep &= arrays.domains.isin(frozenset(domains))
    rows = np.flatnonzero(keep).astype(np.int64)
    if len(rows) == 0:
        where = f" in domains {list(domains)}" if domains else ""
        raise InvalidArgument(f"pool {arrays.name!r} has no candidate{where}")
    return rows


def job_positions(
    arrays: PoolArrays, rows: np.ndarray, pool_rows: np.ndarray, ids: Sequence[str], mode: str
) -> np.ndarray:
    """Positions in a job's sorted ``rows`` of the pool rows of ``ids`` (Score): NotFound for deleted
    candidates, InvalidArgument for rows outside the job (domains the mode did not keep)."""
    if arrays.deleted is not None and arrays.deleted[pool_rows].any():
        gone = [cid for cid, r in zip(ids, pool_rows.tolist(), strict=True) if arrays.deleted[r]]
        raise NotFound(f"pool {arrays.name!r} has no record with id(s) {gone[:10]} (deleted)")
    positions = np.searchsorted(rows, pool_rows)
    inside = (positions < len(rows)) & (rows[np.minimum(positions, len(rows) - 1)] == pool_rows)
    if not inside.all():
        outside = [cid for cid, ok in zip(ids, inside, strict=True) if not ok]
        raise InvalidArgument(f"ids outside the domains kept by the {mode} mode: {outside[:5]}")
    return positions
