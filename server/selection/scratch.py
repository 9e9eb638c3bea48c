"""Scratch arrays reused from one near-copy walk to the next, in a few bounded slots.

The server fixes glibc's mmap threshold at 1 MiB (:mod:`gotd.server.service.allocator`), so every
array of a MiB or more is a fresh mapping, faulted in page by page and returned to the system when
freed. A walk needs a few such arrays (its embedding buffer: 9.6 MB at k = 5,250; a block of inner
products), and splitting its GEMMs under the threshold instead multiplies the parallel regions of a
walk, each of which can wait a scheduler slice for a busy core (measured on two shared cores at load
7.8: the look-ahead's 234 x 5,234 products in five blocks, median 185 ms; in one GEMM, 59 ms; on a quiet
machine both 9 ms).

:func:`scratch` lends an array from a slot (or a fresh one when none is free and large enough) and
takes it back when the block ends: at most ``KEEP`` arrays of at most ``KEEP_BYTES`` each stay in the
process between walks, whatever the number of threads, so the memory kept is bounded by
``KEEP * KEEP_BYTES``; a larger array is freed as before.

Imports numpy only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import numpy as np

__all__ = ["KEEP", "KEEP_BYTES", "scratch"]

#: Arrays kept between walks.
KEEP: Final = 3
#: Largest array kept (larger ones are freed when given back).
KEEP_BYTES: Final = 16 << 20
#: Arrays are lent in whole multiples of this, so one slot serves requests of nearby sizes.
_ROUND: Final = 1 << 20

_lock = threading.Lock()
_free: list[np.ndarray] = []


def _lend(nbytes: int) -> np.ndarray:
    with _lock:
        fits = [i for i, a in enumerate(_free) if a.nbytes >= nbytes]
        if fits:
            return _free.pop(min(fits, key=lambda i: _free[i].nbytes))
    return np.empty(-(-max(nbytes, 1) // _ROUND) * _ROUND, dtype=np.uint8)


def _give_back(array: np.ndarray) -> None:
    if array.nbytes > KEEP_BYTES:
        return
    with _lock:
        _free.append(array)
        if len(_free) > KEEP:  # the smallest leaves
            _free.pop(min(range(len(_free)), key=lambda i: _free[i].nbytes))


@contextmanager
def scratch(shape: tuple[int, ...], dtype: type | np.dtype) -> Iterator[np.ndarray]:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, the caller's alone until the block
    ends (nothing may keep a view of it past that)."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = _lend(count * dt.itemsize)
    try:
        yield raw[: count * dt.itemsize].view(dt).reshape(shape)
    finally:
        _give_back(raw)


def kept_bytes() -> int:
    """Bytes of the arrays kept between walks."""
    with _lock:
        return sum(a.nbytes for a in _free)
