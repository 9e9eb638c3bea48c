"""Pages of the LMDB memory map that a bulk read touched, handed back once read.

A pool load reads every chunk of the pool through the memory map (``buffers=True``: no copy until the
snapshot's own arrays), and each page it touches stays mapped in the process: its resident set grows
by the pool's stored bytes on top of the snapshot, although those pages are page cache (the kernel
keeps them, and reclaims them under pressure). :func:`release` drops a value's whole pages from the
process's page tables with ``madvise(MADV_DONTNEED)`` right after it was copied, so a load's resident
set holds the snapshot and at most one chunk of mapped pages. A later read of those pages faults them
in again from the page cache: the data never changes, only where it is resident.

Dropping every page of the map (:func:`release_file`) reads ``/proc/self/maps`` and walks the whole
mapping: a few ms in a server process with hundreds of mappings, the largest part of a snapshot that grew
by a few thousand rows. :class:`MapReads` amortises it: a whole load drops the map's pages at once; a
snapshot that grew (its rows' own pages dropped as they were copied, by :func:`release`) leaves only
the pages :func:`release` cannot take (B-tree pages, row metadata, the partial pages at the ends of
values, and the page cache's large folios mapped around the pages read: measured 1.9 MiB after 2,000
rows of 256 bytes), and the map is dropped after ``GROWN_LOADS`` such loads or once the rows they read
since the last drop reach ``GROWN_BYTES``, whichever comes first.

Only pages of a shared file mapping of an LMDB data file (``data.mdb``, mapped read-only by LMDB) are
released: a value read in a write transaction may live in a heap page (LMDB's dirty pages) that
``MADV_DONTNEED`` would zero, so an address outside such a mapping is left alone. Elsewhere than on
Linux, :func:`release` does nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading
from typing import Final

import numpy as np

__all__ = ["GROWN_BYTES", "GROWN_LOADS", "MapReads", "release", "release_file"]

_MADV_DONTNEED: Final = 4
_PAGE: Final = mmap.PAGESIZE
_MAP_FILE: Final = "data.mdb"
#: Row bytes grown snapshots may read before the map's pages are dropped again (see the module notes).
GROWN_BYTES: Final = 32 << 20
#: Grown snapshots loaded before the map's pages are dropped again, whatever they read.
GROWN_LOADS: Final = 8


class _Maps:
    """Address ranges of this process's shared mappings of LMDB data files (re-read on a miss)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ranges: list[tuple[int, int]] = []
        self._libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
        if self._libc is not None:
            self._libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            self._libc.madvise.restype = ctypes.c_int

    def _inside(self, start: int, stop: int) -> bool:
        return any(lo <= start and stop <= hi for lo, hi in self._ranges)

    def mapped(self, start: int, stop: int) -> bool:
        """Whether ``[start, stop)`` lies in one shared mapping of an LMDB data file."""
        with self._lock:
            if self._inside(start, stop):
                return True
            self._ranges = _lmdb_ranges()  # a map opened or grown since: read the mappings again
            return self._inside(start, stop)

    @property
    def enabled(self) -> bool:
        return self._libc is not None

    def drop(self, start: int, length: int) -> None:
        if self._libc is not None:
            self._libc.madvise(start, length, _MADV_DONTNEED)


def _lmdb_ranges(path: str = "") -> list[tuple[int, int]]:
    """``(start, stop)`` of each shared mapping of a file named ``data.mdb`` (``/proc/self/maps``), or
    only of the file ``path``."""
    out = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                name = fields[5].rstrip("\n") if len(fields) == 6 else ""
                if name.endswith("/" + _MAP_FILE) and "s" in fields[1] and name == (path or name):
                    lo, hi = fields[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return out


_MAPS = _Maps()


def release(value: bytes | memoryview | np.ndarray) -> int:
    """Drop the whole pages of ``value`` (a buffer read from the LMDB map, or an array over one) from
    the resident set.

    Returns the bytes released: 0 for a value that is not in an LMDB file mapping (a copy, a value of
    a write transaction) or that spans no whole page.
    """
    if not _MAPS.enabled or isinstance(value, bytes):  # bytes: always a copy
        return 0
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            return 0
        start, size = int(value.ctypes.data), int(value.nbytes)
    else:
        size = memoryview(value).nbytes
        start = int(np.frombuffer(value, dtype=np.uint8).ctypes.data) if size else 0
    first, last = -(-start // _PAGE) * _PAGE, (start + size) // _PAGE * _PAGE
    if last <= first or not _MAPS.mapped(start, start + size):
        return 0
    _MAPS.drop(first, last - first)
    return last - first


def release_file(path: str) -> int:
    """Drop every page of this process's shared mappings of the LMDB data file ``path`` from the
    resident set (after a bulk read: the pages :func:`release` could not take, such as B-tree pages
    and the partial pages at the ends of values); returns the bytes of the mappings."""
    if not _MAPS.enabled:
        return 0
    ranges = _lmdb_ranges(path)
    for lo, hi in ranges:
        _MAPS.drop(lo, hi - lo)
    return sum(hi - lo for lo, hi in ranges)


class MapReads:
    """When to drop the map's pages after a load: after a whole load always, after grown snapshots
    every ``GROWN_LOADS`` loads or once the row bytes they read since the last drop reach
    ``GROWN_BYTES``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limit, self._loads = GROWN_BYTES, GROWN_LOADS
        self._since = self._grown = 0

    def read(self, nbytes: int, *, whole: bool) -> bool:
        """Count a load that read ``nbytes`` of rows (``whole``: the pool loaded whole); whether the
        map's pages are to be dropped now."""
        with self._lock:
            self._since += nbytes
            self._grown += 1
            if whole or self._since >= self._limit or self._grown >= self._loads:
                self._since = self._grown = 0
                return True
            return False
