"""Row buffers with spare capacity: a pool snapshot's arrays are views of longer buffers, so the
snapshot of the next pool version appends its new rows in place instead of copying the pool.

A buffer is extended at most once from a given length (the first snapshot to grow claims the spare
rows; a second one growing from the same older snapshot gets a copy), so no snapshot ever sees its
rows change.
"""

from __future__ import annotations

import threading
import weakref
from typing import Final

import numpy as np

__all__ = ["grown_rows", "has_room", "spare_rows"]

GROWTH: Final = 1.125  # spare capacity of a buffer: a pool grown by up to 12.5% is not copied


class _Spare:
    """Row buffers with spare capacity, and how far each is filled (a buffer is extended once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffers: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        self._filled: dict[int, int] = {}

    def claim(self, view: np.ndarray, n: int) -> np.ndarray | None:
        """A view of ``n`` rows of ``view``'s buffer when ``view`` ends where the buffer is filled."""
        buffer = view.base
        if not isinstance(buffer, np.ndarray) or buffer.ndim != view.ndim or len(buffer) < n:
            return None
        with self._lock:
            key = id(buffer)
            if self._buffers.get(key) is not buffer or self._filled.get(key) != len(view):
                return None
            if buffer[: len(view)].__array_interface__["data"] != view.__array_interface__["data"]:
                return None
            self._filled[key] = n
            return buffer[:n]

    def allocate(self, view: np.ndarray, n: int) -> np.ndarray:
        """A fresh buffer holding ``view`` with room to grow; the view of its first ``n`` rows."""
        buffer = _empty((int(n * GROWTH) + 16, *view.shape[1:]), view.dtype)
        buffer[: len(view)] = view
        with self._lock:
            self._buffers[id(buffer)] = buffer
            self._filled[id(buffer)] = n
            for key in [k for k in self._filled if k not in self._buffers]:
                del self._filled[key]
        return buffer[:n]


_SPARE = _Spare()

#: A buffer of at least this many bytes is allocated with transparent huge pages requested
#: (``madvise(MADV_HUGEPAGE)``), whatever numpy's setting (the server turns numpy's requests off:
#: ``gotd.server.service.allocator``). A snapshot's rows are large and long-lived, and on this
#: machine a fault per 4 KiB page cost more than the rows' copy: loading a 10M-row float16 pool
#: (7.2 GB) took 12.9-29.0 s with small pages (2M faults, 9-24 s of kernel time) and 6.0 s with huge
#: pages; a 1M-row pool (0.77 GB) 0.8 s with small pages, 0.4-2.7 s with huge ones (the kernel
#: compacting memory to find them), so the threshold lies between the two.
HUGE_BUFFER_BYTES: Final = 1 << 30
_HUGE_LOCK = threading.Lock()


def _empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if int(np.prod(shape)) * dtype.itemsize < HUGE_BUFFER_BYTES:
        return np.empty(shape, dtype=dtype)
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # type: ignore[attr-defined]
    except ImportError:  # a numpy without the switch: its default
        return np.empty(shape, dtype=dtype)
    with _HUGE_LOCK:  # numpy's switch is global: set only around this allocation
        previous = _set_madvise_hugepage(True)
        try:
            return np.empty(shape, dtype=dtype)
        finally:
            _set_madvise_hugepage(previous)


def spare_rows(n: int, *row_shape: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """An uninitialised ``(n, *row_shape)`` array in a buffer with room for the pool to grow."""
    return _SPARE.allocate(np.empty((0, *row_shape), dtype=dtype), n)


def has_room(view: np.ndarray, n: int) -> bool:
    """Whether ``view`` can grow to ``n`` rows in its buffer's spare capacity (no copy of its rows)."""
    buffer = view.base
    return isinstance(buffer, np.ndarray) and buffer.ndim == view.ndim and len(buffer) >= n


def grown_rows(view: np.ndarray, n: int, appended: bool) -> np.ndarray:
    """``view`` extended to ``n`` rows, writable: in its buffer's spare capacity when only rows past its
    end are written (``appended``), else a copy in a new buffer."""
    if appended:
        claimed = _SPARE.claim(view, n)
        if claimed is not None:
            return claimed
    return _SPARE.allocate(view, n)
