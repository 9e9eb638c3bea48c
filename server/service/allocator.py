"""The server process's heap: large transient blocks go back to the system when freed.

A Select allocates blocks of tens of MiB and frees them (a block of upcast rows, a block of cost,
the k-means assignment's blocks), one after the other. glibc's malloc serves a block of at least its
*mmap threshold* from its own mapping, returned to the system at ``free``; but by default the threshold
rises to the size of any mapped block freed (up to 32 MiB), after which blocks of that size come
from the heap, whose freed space is reused only by blocks that fit in it and is rarely trimmed. Measured
on a 1M-row float16 pool: 0.9 GiB of freed blocks stayed in the process's anonymous memory after one
cold Select (docs/benchmarks/scale.md). :func:`bound_heap` fixes the threshold (which also fixes the
trim threshold: no more dynamic adjustment), so every block of ``threshold`` bytes or more is its own
mapping and a freed one leaves the resident set at once; smaller allocations stay on the heap.
Those add up too (a load's per-chunk decoding, the k-means assignment's 512 KiB blocks of labels: ~16
MiB measured on a 1M-row pool, spread over the main and worker arenas), and a free page amid live
ones stays resident: :func:`trim_heap` hands every free page back (``malloc_trim``) before a pass
that allocates its large blocks, so they do not come on top of it.

numpy asks the kernel for transparent huge pages on every array of 4 MiB or more
(``madvise(MADV_HUGEPAGE)``); where the kernel's ``defrag`` setting is ``madvise`` (a common default)
the first touch of such an array may compact memory in the faulting thread. Since every large block
here is a fresh mapping, that is paid again and again: a grown snapshot's spare rows cost 27-30 ms of
kernel time on their first write, against ~6 ms after. :func:`bound_heap` turns numpy's request off
(the kernel may still back memory with huge pages where its own policy says so).

Elsewhere than glibc (no ``mallopt``), nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Final

__all__ = ["MMAP_THRESHOLD", "bound_heap", "trim_heap"]

LOG = logging.getLogger(__name__)

#: Blocks of at least this many bytes get their own mapping (glibc's default starts at 128 KiB).
MMAP_THRESHOLD: Final = 1 << 20
_M_MMAP_THRESHOLD: Final = -3


def bound_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process and turn off numpy's huge
    page requests; False where the threshold cannot be set."""
    _no_numpy_huge_pages()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    if not ok:
        LOG.warning("could not fix the malloc mmap threshold at %d bytes", threshold)
    return ok


def _no_numpy_huge_pages() -> None:
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # type: ignore[attr-defined]
    except ImportError:  # a numpy without the switch: nothing to turn off
        return
    _set_madvise_hugepage(False)


def trim_heap() -> bool:
    """Return the free pages of every malloc arena to the system (glibc ``malloc_trim(0)``); False
    where there is no ``malloc_trim``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
