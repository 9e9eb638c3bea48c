"""Row values of potential epochs: the c-transform of an epoch's ``g`` for every pool row, kept between
requests so that a later pool version scores only the rows written since.

A potential solved at pool version ``v`` opens an epoch; while the rows written since ``v`` stay within
the staleness bound, later versions keep using its ``g``. The values of an epoch at pool version ``w``
are one float32 per pool row (NaN for rows outside the request's rows). They live in an in-process LRU
bounded in bytes and, when a Redis is configured and they are under a size limit, in Redis under
``<epoch key>:f`` with the epoch's ``g`` (and, for the fused cost, the epoch's IDF weights) beside them
(the dual-cache codec: versioned header, checksum, no pickle), so replicas share them. A value that
does not match (another ``g`` or IDF, a length that contradicts the pool, garbage) is a miss: the rows
are scored again, never trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from gotd.cache.duals.cache import DualCache
from gotd.cache.duals.codec import PotentialEntry
from gotd.server.ot.exact import ExactSum
from gotd.server.service.lru import Lru

LOG = logging.getLogger(__name__)

__all__ = ["EpochValueCache", "EpochValues", "stale_rows"]


@dataclass(frozen=True, slots=True, eq=False)
class EpochValues:
    """The values of one epoch at pool version ``version``: ``values[row]`` (float32, NaN: not scored
    or not one of the request's rows), and ``total``, the exact sum of the values that are not NaN
    (kept from version to version: a new version subtracts the values that leave and adds the new ones)."""

    version: int
    values: np.ndarray
    total: ExactSum

    @staticmethod
    def of(version: int, values: np.ndarray) -> EpochValues:
        """Values with their sum computed (values read from Redis, which keeps no sum)."""
        return EpochValues(version, values, ExactSum.of(values[~np.isnan(values)]))


def stale_rows(row_versions: np.ndarray, since: int) -> int:
    """Rows written after pool version ``since`` (added or changed)."""
    return int(np.count_nonzero(row_versions > np.uint64(since)))


class EpochValueCache:
    """Epoch values in process (LRU of ``max_bytes``) and in Redis (values up to ``redis_max_bytes``)."""

    def __init__(self, duals: DualCache, *, max_bytes: int, redis_max_bytes: int, entries: int = 256) -> None:
        self._duals = duals
        self._local: Lru[str, EpochValues] = Lru(max_bytes, sizeof=lambda v: int(v.values.nbytes) + 64)
        self._redis_max_bytes = redis_max_bytes
        self._potentials: Lru[str, PotentialEntry] = Lru(entries)
        self._newest: Lru[str, str] = Lru(entries)

    # -- the epochs' potentials, as this process last saw them ----------------------------------------
    def potential(self, key: str) -> PotentialEntry | None:
        """``key``'s potential from the dual cache; from this process's copy while Redis fails."""
        entry = self._duals.get(key)
        if entry is None and not self._duals.healthy:
            entry = self._potentials.get(key)
        return entry

    def latest(self, family: str) -> str | None:
        """The family's newest epoch key; this process's own while Redis fails."""
        key = self._duals.get_latest(family)
        if key is None and not self._duals.healthy:
            key = self._newest.get(family)
        return key

    def remember(self, family: str, key: str, entry: PotentialEntry) -> None:
        """Keep an epoch's potential in process (for when Redis fails: the same epoch keeps serving)."""
        self._potentials.put(key, entry)
        newest = self._newest.get(family)
        if newest is None or _version(newest) <= _version(key):
            self._newest.put(family, key)

    def get(
        self,
        key: str,
        g: np.ndarray,
        row_versions: np.ndarray,
        version: int,
        *,
        idf: np.ndarray | None = None,
    ) -> EpochValues | None:
        """The newest values of epoch ``key`` usable for a snapshot with ``row_versions``, or None.

        Usable: at a pool version no newer than the snapshot's (``version``), for the same ``g`` and
        ``idf`` (bit for bit; the fused cost's epoch IDF), covering exactly the rows that existed then
        (rows past its end were written after).
        """
        found = self._local.get(key)
        if found is not None and _fits(len(found.values), found.version, row_versions, version):
            return found
        if self._duals.backend != "redis":
            return None
        entry = self._duals.get(f"{key}:f")
        if entry is None:
            return None
        try:
            stored = int(entry.meta["pool_version"])
            ok = entry.f is not None and entry.g.tobytes() == g.tobytes() and stored >= 0
            ok = ok and _same(entry.idf, idf)
        except (KeyError, TypeError, ValueError, OverflowError):
            ok = False
        if not ok or entry.f is None:
            LOG.warning("epoch values under %s:f do not match the epoch; scored again", key)
            return None
        if not _fits(len(entry.f), stored, row_versions, version) or bool(np.isinf(entry.f).any()):
            LOG.warning("epoch values under %s:f do not fit the pool; scored again", key)
            return None
        values = EpochValues.of(stored, entry.f)
        self._local.put(key, values)
        return values

    def held(self) -> list[str]:
        """Keys of the epochs whose values this process holds."""
        return list(self._local.held_keys())

    def put(
        self, key: str, g: np.ndarray, values: EpochValues, *, share: bool, idf: np.ndarray | None = None
    ) -> None:
        """Keep ``values`` in process, and in Redis (``share``) when they are under the size limit."""
        self._local.put(key, values)
        if share and self._duals.backend == "redis" and values.values.nbytes <= self._redis_max_bytes:
            meta = {"pool_version": values.version}
            entry = PotentialEntry(g=g, rows=None, meta=meta, f=values.values, idf=idf)
            self._duals.put(f"{key}:f", entry)

    def forget(self, *, potentials: bool = True) -> None:
        """Drop every in-process value, and (``potentials``) every potential: a deleted pool."""
        for lru in (self._local, self._potentials, self._newest) if potentials else (self._local,):
            lru.discard_where(lambda _key: True)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both None, or the same float32 bytes."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _version(key: str) -> int:
    """The pool version of an epoch key (``family:v<version>``)."""
    tail = key.rpartition(":v")[2]
    return int(tail) if tail.isdigit() else -1


def _fits(n: int, stored: int, row_versions: np.ndarray, version: int) -> bool:
    """Whether ``n`` values of pool version ``stored`` can serve a snapshot of ``version``."""
    if stored > version or n > len(row_versions):
        return False
    return bool((row_versions[n:] > np.uint64(stored)).all())
