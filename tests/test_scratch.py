"""Scratch arrays of the near-copy walk: lent whole to one caller, reused, and bounded in what stays."""

from __future__ import annotations

import threading

import numpy as np

from gotd.server.selection import scratch as scratch_module
from gotd.server.selection.scratch import KEEP, KEEP_BYTES, kept_bytes, scratch


def test_an_array_given_back_is_lent_again_and_never_to_two_callers_at_once() -> None:
    with scratch((1000, 384), np.float32) as first:
        first[:] = 1.0
        address = first.ctypes.data
        with scratch((1000, 384), np.float32) as second:  # the first is still lent
            assert second.ctypes.data != address
            assert not np.shares_memory(first, second)
    with scratch((500, 384), np.float32) as again:  # fits in an array given back
        assert again.flags.c_contiguous
        assert again.shape == (500, 384)
        assert again.dtype == np.float32
        assert again.ctypes.data in {address, second.ctypes.data}


def test_what_stays_between_walks_is_bounded() -> None:
    for size in (1 << 20, 2 << 20, 3 << 20, 4 << 20, KEEP_BYTES + (1 << 20)):
        with scratch((size,), np.uint8):
            pass
    assert len(scratch_module._free) <= KEEP
    assert kept_bytes() <= KEEP * KEEP_BYTES
    assert all(a.nbytes <= KEEP_BYTES for a in scratch_module._free)


def test_threads_get_their_own_arrays() -> None:
    seen: list[int] = []
    hold = threading.Barrier(4)

    def worker() -> None:
        with scratch((256, 1024), np.float32) as mine:
            mine[:] = threading.get_ident() % 1000
            hold.wait()  # all four lent at once
            assert (mine == threading.get_ident() % 1000).all()
            seen.append(mine.ctypes.data)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4
