"""In-process LRU behind :class:`gotd.cache.duals.DualCache` (embedded default and Redis fallback)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["TtlLru"]


class TtlLru:
    """Thread-safe LRU of byte values with a count limit, a byte budget and a per-entry expiry."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_seconds: float) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl_seconds
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= time.monotonic():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._drop(key)
            if len(value) > self._max_bytes:
                return
            self._items[key] = (time.monotonic() + self._ttl, value)
            self._bytes += len(value)
            while len(self._items) > self._max_entries or self._bytes > self._max_bytes:
                self._drop(next(iter(self._items)))

    def delete_where(self, predicate: Callable[[str], bool]) -> int:
        with self._lock:
            doomed = [key for key in self._items if predicate(key)]
            for key in doomed:
                self._drop(key)
            return len(doomed)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item[1])
