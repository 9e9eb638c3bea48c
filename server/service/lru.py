"""The engine's in-memory caches (pool snapshots, fused rows, scores): a locked ``cachetools.LRUCache``.

Bounded by entry count, or by bytes when a ``sizeof`` is given (the least recently used items leave
first until the sum of their sizes fits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

__all__ = ["Lru"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most ``limit`` items, or bytes with ``sizeof`` (0: keep nothing); thread-safe."""

    def __init__(self, limit: int, sizeof: Callable[[V], int] | None = None) -> None:
        self._limit = max(0, limit)
        self._items: LRUCache[K, V] = LRUCache(maxsize=max(1, self._limit), getsizeof=sizeof)
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        """Store ``value`` under ``key``; an item larger than the whole limit is not kept."""
        if self._limit == 0:
            return
        with self._lock:
            try:
                self._items[key] = value
            except ValueError:  # larger than maxsize
                self._items.pop(key, None)

    def discard_where(self, predicate: Callable[[K], bool]) -> None:
        """Drop every item whose key satisfies ``predicate``."""
        with self._lock:
            for key in [k for k in self._items if predicate(k)]:
                del self._items[key]

    def held_keys(self) -> list[K]:
        """The keys held now (a copy; the order says nothing)."""
        with self._lock:
            return list(self._items.keys())

    @property
    def size(self) -> float:
        """Current size: items, or bytes with ``sizeof``."""
        with self._lock:
            return float(self._items.currsize)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
