"""A cold Select's memory (issue 15): a snapshot load keeps no mapped pages of the store and never holds
the pool twice; freed large blocks leave the process.

Real LMDB stores in tmp_path; sizes measured by the process's own page tables (``/proc/self/smaps``)
and by tracemalloc (numpy arrays and Python objects), never by time.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import lmdb
import numpy as np
import pytest

from gotd.cache.records import Record
from gotd.cache.store import pages
from gotd.cache.store.core import PoolArrays, Store
from gotd.cache.store.layout import pool_chunks
from gotd.cache.store.pages import release
from gotd.cache.store.read import require_pool
from gotd.server.service.pools import PoolSnapshots, snapshot_bytes
from tests._store_helpers import dense_sketches
from tests.conftest import clustered

linux = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs /proc/self/smaps")
T = TypeVar("T")
DIM = 64


def _mapped_bytes(store: Store) -> int:
    """Resident bytes of this process's mappings of the store's data file."""
    name, total, inside = str(store.env.path / "data.mdb"), 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                inside = fields[-1] == name
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def _traced_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the peak of the memory it traced above what was traced before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _pool(store: Store, name: str, n: int, *, start: int = 0, texts: bool = False) -> None:
    x = clustered(n, seed=start + 1, dim=DIM)
    words = ("alpha beta", "gamma delta", "epsilon zeta eta")
    records = [
        Record(id=f"{name}{start + i:07d}", embedding=x[i], text=words[i % 3] if texts else None)
        for i in range(n)
    ]
    store.upsert(name, records, model="m", dim=DIM, vectors=x)


@linux
def test_a_load_leaves_no_page_of_the_store_mapped(tmp_path: Path) -> None:
    with Store(tmp_path / "s", vector_dtype="float32") as store:
        _pool(store, "p", 160_000)
        loaded = store.load_vectors("p", upcast=False)
        assert loaded.vectors.nbytes == 160_000 * DIM * 4  # 40 MiB
        assert _mapped_bytes(store) == 0

        def walk(txn: lmdb.Transaction) -> tuple[int, int]:
            most = read = 0
            prefix = require_pool(txn, store.env.dbs, "p").prefix
            for _chunk, value in pool_chunks(txn, store.env.dbs["vectors"], prefix):
                read += len(value)
                most = max(most, _mapped_bytes(store))
            return most, read

        most, read = store.env.read(walk, buffers=True)
        assert read == loaded.vectors.nbytes
        # while a load reads: the chunk being read, and the pages of the page cache's large folios
        # mapped with it (measured up to 4.6 MiB on Linux 6.18), never the pool read so far
        assert most < read // 4
        assert release(b"x" * 65536) == 0, "a copy is no page of the map"
        assert release(np.zeros(65536, dtype=np.uint8)) == 0


def test_sketch_rows_are_read_beside_the_held_rows(tmp_path: Path) -> None:
    from gotd.server.selection.sketches import tf_rows

    with Store(tmp_path / "s", sketcher=tf_rows, vector_dtype="float16") as store:
        _pool(store, "p", 3000, texts=True)
        snapshots = PoolSnapshots(store, 1 << 30)
        plain = snapshots.get("p", sketches=False)
        assert plain.sketches is None
        sketched, peak = _traced_peak(lambda: snapshots.get("p", sketches=True))
        assert sketched.sketches is not None
        assert sketched.vectors is plain.vectors
        assert sketched.ids is plain.ids
        # the sparse sketch rows, written in place, and nothing the size of the pool besides
        assert peak <= sketched.sketches.nbytes * 1.125 + (256 << 10)
        assert snapshots.size_bytes == snapshot_bytes(sketched), "one snapshot held, serving both"
        assert snapshots.get("p", sketches=False) is sketched
        reloaded = store.load_vectors("p", upcast=False)
        assert reloaded.sketches is not None
        assert np.array_equal(dense_sketches(reloaded), dense_sketches(sketched))
        assert np.array_equal(reloaded.vectors, sketched.vectors)


@linux
def test_grown_snapshots_drop_the_map_once_they_have_read_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "GROWN_BYTES", 3000 * DIM * 4)  # 3,000 rows of this pool
    monkeypatch.setattr(pages, "GROWN_LOADS", 3)
    with Store(tmp_path / "s", vector_dtype="float32") as store:
        _pool(store, "p", 20_000)
        snapshot = store.load_vectors("p", upcast=False)
        assert _mapped_bytes(store) == 0, "a whole load drops the map"
        # 2,000 rows read: the map stays as the growth left it (B-tree pages, row metadata, folios
        # mapped around them; measured 1.9 MiB), then 4,000 rows since the last drop: dropped
        for start, dropped in ((20_000, False), (22_000, True)):
            _pool(store, "p", 2000, start=start)
            snapshot = store.load_vectors("p", upcast=False, base=snapshot)
            assert (_mapped_bytes(store) == 0) is dropped
        for start, dropped in ((24_000, False), (24_010, False), (24_020, True)):  # the third load
            _pool(store, "p", 10, start=start)
            snapshot = store.load_vectors("p", upcast=False, base=snapshot)
            assert (_mapped_bytes(store) == 0) is dropped
        assert np.array_equal(snapshot.vectors, store.load_vectors("p", upcast=False).vectors)


def _grow(store: Store, snapshots: PoolSnapshots, n: int, extra: int) -> tuple[PoolArrays, int, int]:
    """The pool's snapshot after ``extra`` rows are appended to its ``n``, and the traced peak of that
    load against the new snapshot's bytes."""
    _pool(store, "p", extra, start=n)
    grown, peak = _traced_peak(lambda: snapshots.get("p"))
    assert len(grown.ids) == n + extra
    return grown, peak, snapshot_bytes(grown)


def test_a_new_version_never_holds_the_pool_twice(tmp_path: Path) -> None:
    with Store(tmp_path / "s", vector_dtype="float32") as store:
        _pool(store, "p", 4000)
        snapshots = PoolSnapshots(store, 1 << 30)
        first = snapshots.get("p")
        first_vectors = first.vectors.copy()
        del first  # only the cache holds it now
        # +50%: past the spare rows, so the older snapshot leaves before the pool is read whole
        grown, peak, size = _grow(store, snapshots, 4000, 2000)
        # + the chunk being read: its ids and domains decoded as Python strings (the snapshot's columns
        # keep them compact, so they no longer hide in the snapshot's own bytes)
        assert peak <= size * 1.25 + (384 << 10), f"{peak} traced for a snapshot of {size} bytes"
        assert np.array_equal(grown.vectors[:4000], first_vectors)
        # inside the spare rows: appended in place, so only the new rows are read (the first growth
        # also imports what the change log's reading needs)
        _grow(store, snapshots, 6000, 100)
        grown, peak, size = _grow(store, snapshots, 6100, 300)
        assert peak <= size * 0.25
        reloaded = store.load_vectors("p", upcast=False)
        assert np.array_equal(reloaded.vectors, grown.vectors)
        assert reloaded.ids == grown.ids


_FREED_BLOCKS = """
import sys
import numpy as np
from gotd.server.service.allocator import bound_heap

def anonymous():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Anonymous:"))

from numpy._core.multiarray import _get_madvise_hugepage

assert _get_madvise_hugepage()  # numpy's default: large arrays ask for huge pages
assert bound_heap()
assert not _get_madvise_hugepage()  # no more: no compaction stalls on a fresh block's first touch
big = np.ones(24 << 20, dtype=np.uint8)  # by default, freeing it raises the threshold to 24 MiB
del big
before = anonymous()
kept = []
for size in range(2, 18):  # blocks under 24 MiB, each followed by a small allocation that stays
    block = np.ones(size << 20, dtype=np.uint8)
    kept.append(np.ones(1 << 12, dtype=np.uint8))
    del block
print(anonymous() - before)
"""


@linux
def test_freed_large_blocks_leave_the_process() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FREED_BLOCKS], capture_output=True, text=True, check=True, timeout=120
    )
    assert int(out.stdout) < 4 << 20, "freed blocks of the server stayed in its heap"


_FREED_SMALL_BLOCKS = """
import numpy as np
from gotd.server.service.allocator import bound_heap, trim_heap

def anonymous():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Anonymous:"))

assert bound_heap()
before = anonymous()
blocks = [np.ones(512 << 10, dtype=np.uint8) for _ in range(64)]  # under the threshold: on the heap
kept = blocks[::16]  # live blocks amid the freed ones: the heap's top cannot shrink past them
del blocks
freed = anonymous() - before
assert trim_heap()
print(freed, anonymous() - before)
"""


@linux
def test_trimming_hands_back_free_heap_pages_amid_live_ones() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FREED_SMALL_BLOCKS], capture_output=True, text=True, check=True, timeout=120
    )
    held, trimmed = map(int, out.stdout.split())
    assert held > 16 << 20, "the freed blocks were handed back without a trim: nothing to measure"
    assert trimmed < 4 << 20, "free heap pages stayed resident after trim_heap"


def _vm_flags(array: np.ndarray) -> set[str]:
    """The ``VmFlags`` of the mapping holding ``array``'s middle byte (/proc/self/smaps; numpy advises
    from the first whole page on, so the page of the first byte may be a mapping of its own)."""
    address = array.__array_interface__["data"][0] + array.nbytes // 2
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError("no mapping holds the array")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="smaps is Linux's")
def test_large_snapshot_buffers_ask_for_huge_pages_and_leave_numpys_switch_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage

    from gotd.cache.store import buffers

    monkeypatch.setattr(buffers, "HUGE_BUFFER_BYTES", 16 << 20)
    previous = _set_madvise_hugepage(False)  # as in the server
    try:
        large = buffers.spare_rows(5_000, 1024, dtype=np.float32)  # 22.5 MB with the spare rows
        assert "hg" in _vm_flags(large)
        assert not _get_madvise_hugepage()  # a smaller buffer is numpy's default: nothing asked
    finally:
        _set_madvise_hugepage(previous)
