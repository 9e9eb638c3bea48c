"""In-process cache behind :class:`gotd.cache.duals.cache.DualCache` (embedded default and Redis fallback).

A locked ``cachetools.TTLCache`` of byte values. Both limits hold at once: every entry is charged at
least ``max_bytes / max_entries`` bytes, so the byte budget also caps the count at ``max_entries``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress

from cachetools import TTLCache

__all__ = ["TtlLru"]


class TtlLru:
    """Thread-safe LRU of byte values with a count limit, a byte budget and a per-entry expiry."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_seconds: float) -> None:
        floor = max(1, max_bytes // max(1, max_entries))
        self._items: TTLCache[str, bytes] = TTLCache(
            maxsize=max(1, max_bytes), ttl=ttl_seconds, getsizeof=lambda value: max(len(value), floor)
        )
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The value of ``key`` (now the most recently used) unless absent or expired."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, value: bytes) -> None:
        """Store ``value``; a value larger than the whole budget is not kept."""
        with self._lock:
            self._items.pop(key, None)
            with suppress(ValueError):  # larger than the whole budget
                self._items[key] = value

    def delete_where(self, predicate: Callable[[str], bool]) -> int:
        """Drop every entry whose key satisfies ``predicate``; return how many."""
        with self._lock:
            doomed = [key for key in self._items if predicate(key)]
            for key in doomed:
                del self._items[key]
            return len(doomed)

    def __len__(self) -> int:
        with self._lock:
            self._items.expire()
            return len(self._items)
