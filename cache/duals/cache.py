"""Dual cache: target potentials in Redis, with an in-process LRU as the embedded default and as fallback.

Redis is a cache, never the source of truth. Without a Redis URL the cache is an in-process LRU (the
embedded default). With one, Redis is *the* cache and the LRU only serves while Redis fails, so a
garbage value in Redis is seen (and counted, logged, deleted) as garbage rather than hidden behind a
local copy. Every Redis call has short socket timeouts and no client-side retries; any Redis error
marks the cache unhealthy, and Redis is then skipped until ``retry_interval_seconds`` have passed.

Values are encoded with :mod:`gotd.cache.duals.codec` (versioned raw little-endian arrays + JSON metadata,
never pickle). Redis layout under ``prefix``: ``<prefix>pot:<key>`` holds an encoded entry and
``<prefix>latest:<family>`` the key of the family's newest entry; both expire after ``ttl_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from gotd.cache.duals.codec import CorruptEntry, PotentialEntry, decode_entry, encode_entry
from gotd.cache.duals.connect import connect, wrong_type
from gotd.cache.duals.keys import cache_key, glob_escape, render_part
from gotd.cache.duals.lru import TtlLru

if TYPE_CHECKING:  # redis is imported when a URL is given (.connect)
    import redis

__all__ = ["EVENTS", "DualCache", "cache_key", "render_part"]

LOG = logging.getLogger(__name__)
T = TypeVar("T")

#: Names passed to the ``events`` callback.
EVENTS: Final = ("hit", "miss", "error", "corrupt", "put", "fallback_hit")

_MAX_KEY = 1024
_SCAN_BATCH = 500


class DualCache:
    """Cache of target potentials (:class:`~gotd.cache.duals.codec.PotentialEntry`), keyed by
    :func:`cache_key`.

    Parameters
    ----------
    redis_url : str or None
        ``redis://``, ``rediss://`` or ``unix://`` URL; None for the in-process LRU only.
    prefix : str
        Namespace of every Redis key this cache touches.
    ttl_seconds : int
        Expiry of entries and latest pointers (Redis ``EX``; also applied to the LRU).
    timeout_seconds : float
        Socket connect and read/write timeout of every Redis call; no client-side retries.
    retry_interval_seconds : float
        While Redis is unhealthy it is skipped; one call tries it again after this interval.
    lru_entries : int
        Capacity of the in-process LRU (entries, and separately latest pointers).
    events : callable, optional
        Called with one of :data:`EVENTS` (metrics). A corrupt value gives ``"corrupt"`` then ``"miss"``;
        a Redis failure gives ``"error"`` followed by the fallback's ``"fallback_hit"`` or ``"miss"``.
    on_health_change : callable, optional
        Called with False when Redis starts failing (also when it is unreachable at construction)
        and with True when it answers again; once per transition, outside any lock.
    lru_max_bytes : int
        Byte budget of the in-process LRU (PAPER-mode entries carry their eligible rows).

    Notes
    -----
    Thread-safe: the LRU and the health state have locks; the redis-py client uses a connection pool.
    The key of :meth:`set_latest` is last-writer-wins.
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        prefix: str = "gotd:",
        ttl_seconds: int = 7 * 24 * 3600,
        timeout_seconds: float = 0.25,
        retry_interval_seconds: float = 5.0,
        lru_entries: int = 256,
        events: Callable[[str], None] | None = None,
        on_health_change: Callable[[bool], None] | None = None,
        lru_max_bytes: int = 512 * 2**20,
    ) -> None:
        if ttl_seconds <= 0 or timeout_seconds <= 0 or retry_interval_seconds < 0:
            raise ValueError("ttl_seconds and timeout_seconds must be > 0, retry_interval_seconds >= 0")
        if lru_entries < 1 or lru_max_bytes < 1:
            raise ValueError("lru_entries and lru_max_bytes must be >= 1")
        self._entries_ns = f"{prefix}pot:"
        self._latest_ns = f"{prefix}latest:"
        self._ttl = int(ttl_seconds)
        self._retry_interval = float(retry_interval_seconds)
        self._events = events
        self._on_health_change = on_health_change
        self._lru = TtlLru(lru_entries, lru_max_bytes, float(ttl_seconds))
        self._latest = TtlLru(lru_entries, lru_max_bytes, float(ttl_seconds))
        self._state_lock = threading.Lock()
        self._healthy = True
        self._retry_at = 0.0
        self._client: redis.Redis | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)  # what a failed Redis call raises
        self._backend: Literal["redis", "memory"] = "memory" if redis_url is None else "redis"
        if redis_url is not None:
            self._client, self._errors = connect(redis_url, timeout_seconds)
            self.check()

    # ----------------------------------------------------------------- state
    @property
    def backend(self) -> Literal["redis", "memory"]:
        """The configured backend: ``"redis"`` when a URL was given (even while falling back)."""
        return self._backend

    @property
    def healthy(self) -> bool:
        """True when no Redis is configured, or Redis answered the last call made to it."""
        return self._healthy

    def check(self) -> bool:
        """PING Redis now (ignoring the retry interval), update the health state and return it."""
        client = self._client
        if client is None:
            return True
        try:
            client.ping()
        except self._errors as err:
            self._failed("ping", err)
        else:
            self._succeeded()
        return self._healthy

    def close(self) -> None:
        """Close the Redis client and its connection pool; later calls use the LRU only. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> DualCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- entries
    def get(self, key: str) -> PotentialEntry | None:
        """Look ``key`` up: Redis while healthy, else the in-process LRU.

        Parameters
        ----------
        key : str
            Full key, e.g. ``cache_key(...) + ":v<pool version>"``.

        Returns
        -------
        PotentialEntry or None
            None on a miss, a corrupt value (deleted) or a failing Redis without a fallback copy.
        """
        rkey = self._entries_ns + _checked(key)
        answered, entry = self._redis_get(rkey, "get", self._decode)
        if answered:
            self._emit("miss" if entry is None else "hit")
            return entry
        blob = self._lru.get(rkey)
        entry = None if blob is None else decode_entry(blob)  # written by this process: well formed
        self._emit("miss" if entry is None else "hit" if self._backend == "memory" else "fallback_hit")
        return entry

    def put(self, key: str, entry: PotentialEntry) -> None:
        """Store ``entry`` under ``key`` for ``ttl_seconds`` (in Redis, or in the LRU while Redis fails).

        Parameters
        ----------
        key : str
            Full key of the entry.
        entry : PotentialEntry
            The potential and its solve metadata.

        Raises
        ------
        ValueError
            If the entry's metadata is not JSON-serialisable (a caller bug, not a cache failure).
        """
        rkey = self._entries_ns + _checked(key)
        blob = encode_entry(entry)
        if not self._redis_set(rkey, blob, "put"):
            self._lru.put(rkey, blob)
        self._emit("put")

    # ----------------------------------------------------------------- latest pointers
    def get_latest(self, family: str) -> str | None:
        """The key last stored with :meth:`set_latest` for ``family``, or None (no hit/miss events).

        Parameters
        ----------
        family : str
            Pool + target + parameters without the pool version (a :func:`cache_key`).

        Returns
        -------
        str or None
            The newest full key of the family; its entry may have expired or be evicted.
        """
        rkey = self._latest_ns + _checked(family)
        answered, latest = self._redis_get(rkey, "get_latest", self._decode_pointer)
        if answered:
            return latest
        blob = self._latest.get(rkey)
        return None if blob is None else blob.decode("utf-8")

    def set_latest(self, family: str, key: str) -> None:
        """Point ``family`` at its newest ``key`` (last writer wins), for ``ttl_seconds``.

        Parameters
        ----------
        family : str
            Pool + target + parameters without the pool version (a :func:`cache_key`).
        key : str
            The full key just stored with :meth:`put`.
        """
        rkey = self._latest_ns + _checked(family)
        value = _checked(key).encode("utf-8")
        if not self._redis_set(rkey, value, "set_latest"):
            self._latest.put(rkey, value)

    # ----------------------------------------------------------------- deletion
    def delete_prefix(self, pool_token: str, *, part: str = "pool") -> int:
        """Drop the entries and latest pointers of a deleted pool (best effort).

        Removes every key whose ``:``-separated parts include ``<part>=<pool_token>``, with the value
        rendered as :func:`cache_key` renders it. Redis keys are found with ``SCAN`` and removed with
        ``UNLINK``; a Redis failure stops the Redis side (the TTL removes the rest).

        Returns
        -------
        int
            Number of keys removed (Redis and LRU together).
        """
        segment = f"{part}={render_part(pool_token)}"

        def matches(rkey: str) -> bool:
            for ns in (self._entries_ns, self._latest_ns):
                if rkey.startswith(ns):
                    return segment in rkey[len(ns) :].split(":")
            return False

        removed = self._lru.delete_where(matches) + self._latest.delete_where(matches)
        client = self._client_for_call()
        if client is None:
            return removed
        try:
            batch: list[bytes] = []
            for ns in (self._entries_ns, self._latest_ns):
                pattern = f"{glob_escape(ns)}*{glob_escape(segment)}*"
                for raw in client.scan_iter(match=pattern, count=_SCAN_BATCH):
                    if matches(raw.decode("utf-8", "replace")):
                        batch.append(raw)
                    if len(batch) >= _SCAN_BATCH:
                        removed += int(client.unlink(*batch))
                        batch.clear()
            if batch:
                removed += int(client.unlink(*batch))
        except self._errors as err:
            self._failed("delete_prefix", err)
        else:
            self._succeeded()
        return removed

    # ----------------------------------------------------------------- internals
    def _client_for_call(self) -> redis.Redis | None:
        """The Redis client when it should be tried now (healthy, or this call claimed the retry)."""
        client = self._client
        if client is None:
            return None
        with self._state_lock:
            if self._healthy:
                return client
            now = time.monotonic()
            if now < self._retry_at:
                return None
            self._retry_at = now + self._retry_interval  # other threads keep using the LRU meanwhile
            return client

    def _redis_set(self, rkey: str, value: bytes, op: str) -> bool:
        client = self._client_for_call()
        if client is None:
            return False
        try:
            client.set(rkey, value, ex=self._ttl)
        except self._errors as err:
            self._failed(op, err)
            return False
        self._succeeded()
        return True

    def _redis_get(
        self, rkey: str, op: str, decode: Callable[[redis.Redis, str, Any], T | None]
    ) -> tuple[bool, T | None]:
        """Read and decode ``rkey`` in Redis: ``(True, value)`` when Redis answered (None: a miss, or a
        corrupt value, deleted), ``(False, None)`` when it is off or failed (read the in-process copy)."""
        client = self._client_for_call()
        if client is None:
            return False, None
        try:
            raw = client.get(rkey)
        except self._errors as err:
            if not wrong_type(err):
                self._failed(op, err)
                return False, None
            self._succeeded()
            self._discard(client, rkey, CorruptEntry("not a string value"))
            return True, None
        self._succeeded()
        return True, None if raw is None else decode(client, rkey, raw)

    def _decode(self, client: redis.Redis, rkey: str, raw: Any) -> PotentialEntry | None:
        try:
            return decode_entry(raw)
        except CorruptEntry as err:
            self._discard(client, rkey, err)
            return None

    def _decode_pointer(self, client: redis.Redis, rkey: str, raw: Any) -> str | None:
        try:
            return _checked(bytes(raw).decode("utf-8"))
        except ValueError as err:  # UnicodeDecodeError included
            self._discard(client, rkey, CorruptEntry(str(err)))
            return None

    def _discard(self, client: redis.Redis, rkey: str, err: CorruptEntry) -> None:
        """Count, log and delete a garbage value (a racing good write may be lost: a miss, no harm)."""
        self._emit("corrupt")
        LOG.warning("dual cache: corrupt value under %s (%s); treated as a miss and deleted", rkey, err)
        try:
            client.delete(rkey)
        except self._errors as exc:
            self._failed("delete", exc)

    def _failed(self, op: str, err: BaseException) -> None:
        self._emit("error")
        with self._state_lock:
            was_healthy = self._healthy
            self._healthy = False
            self._retry_at = time.monotonic() + self._retry_interval
        if was_healthy:
            LOG.warning(
                "dual cache: Redis %s failed (%s: %s); using the in-process fallback, retry in %.1fs",
                op,
                type(err).__name__,
                err,
                self._retry_interval,
            )
            self._notify_health(False)
        else:
            LOG.debug("dual cache: Redis %s still failing (%s: %s)", op, type(err).__name__, err)

    def _succeeded(self) -> None:
        if self._healthy:
            return
        with self._state_lock:
            was_healthy, self._healthy = self._healthy, True
        if not was_healthy:
            LOG.info("dual cache: Redis answers again; the in-process fallback is no longer used")
            self._notify_health(True)

    def _notify_health(self, ok: bool) -> None:
        if self._on_health_change is not None:
            try:
                self._on_health_change(ok)
            except Exception:
                LOG.warning("dual cache: on_health_change callback failed", exc_info=True)

    def _emit(self, event: str) -> None:
        if self._events is not None:
            try:
                self._events(event)
            except Exception:
                LOG.debug("dual cache: events callback failed", exc_info=True)


def _checked(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY or not key.isprintable():
        raise ValueError(f"cache keys must be printable non-empty str of at most {_MAX_KEY} chars")
    return key
