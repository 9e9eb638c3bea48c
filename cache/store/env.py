"""The LMDB environment of the store: opening, one writer at a time, map growth and stale readers.

LMDB allows one write transaction at a time per environment; the store serialises writers with a
lock. When a write runs out of map space (``lmdb.MapFullError``) the transaction is aborted, the map is
doubled and the whole write is retried, so a batch is either committed whole or not at all. Growing
the map remaps memory, which is only safe with no transaction open in this process: readers hold a
shared lock that the resize takes exclusively.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar, cast

import lmdb

from gotd.cache.errors import FailedPrecondition, NotFound, ResourceExhausted
from gotd.cache.store.layout import ADDED_DATABASES, DATABASES, FORMAT_VERSION
from gotd.cache.store.pages import release_file

LOG = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAP_SIZE: Final = 1 << 30
DEFAULT_MAX_MAP_SIZE: Final = 1 << 40
ENV_DIRNAME: Final = "lmdb"


class _SharedLock:
    """Many readers or one exclusive holder (the map resize); exclusive waiters block new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Env:
    """One LMDB environment under ``data_dir/lmdb`` with the store's named databases.

    Parameters
    ----------
    data_dir : Path
        The server's data directory (created when missing, unless ``readonly``).
    map_size : int
        Initial map size in bytes; grows by doubling up to ``max_map_size``.
    readonly : bool
        Open read-only (the environment must exist); writes raise FailedPrecondition.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        readonly: bool = False,
    ) -> None:
        self.path = Path(data_dir) / ENV_DIRNAME
        self.readonly = readonly
        self.max_map_size = max_map_size
        if readonly and not (self.path / "data.mdb").is_file():
            raise NotFound(f"no store at {self.path}")
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path),
            map_size=map_size,
            max_dbs=len(DATABASES) + 1,
            readonly=readonly,
            subdir=True,
            lock=True,
            max_readers=256,
            max_spare_txns=8,
        )
        stale = self.env.reader_check()
        if stale:
            LOG.warning("cleared %d stale LMDB reader slot(s) in %s", stale, self.path)
        self.dbs: dict[str, lmdb._Database] = {}
        for name in DATABASES:
            try:
                self.dbs[name] = self.env.open_db(name.encode(), create=not readonly)
            except lmdb.NotFoundError:
                if name not in ADDED_DATABASES:
                    raise
                LOG.info("store %s has no %r database (written by an older gotd)", self.path, name)
        self._write_lock = threading.Lock()
        self._map_lock = _SharedLock()
        self._closed = False
        if not readonly:
            self._check_format()

    def _check_format(self) -> None:
        def check(txn: lmdb.Transaction) -> None:
            raw = txn.get(b"format", db=self.dbs["meta"])
            if raw is None:
                txn.put(b"format", FORMAT_VERSION.to_bytes(4, "little"), db=self.dbs["meta"])
            elif int.from_bytes(bytes(raw), "little") != FORMAT_VERSION:
                raise FailedPrecondition(
                    f"store {self.path} has format {int.from_bytes(bytes(raw), 'little')}, "
                    f"this gotd reads format {FORMAT_VERSION}"
                )

        self.write(check)

    @property
    def map_size(self) -> int:
        size: int = self.env.info()["map_size"]
        return size

    def release_pages(self) -> int:
        """Drop the memory map's pages from this process's resident set (they stay in the page cache,
        and a later read faults them in again): after a bulk read (:mod:`.pages`)."""
        return release_file(os.path.realpath(self.path / "data.mdb"))

    def read(self, fn: Callable[[lmdb.Transaction], T], *, buffers: bool = False) -> T:
        """Run ``fn`` in a read transaction (a consistent snapshot); ``buffers`` gives memoryviews."""
        self._check_open()
        for _attempt in range(8):
            try:
                with self._map_lock.shared():
                    self._check_open()
                    with self._begin_read(buffers) as txn:
                        return fn(txn)
            except lmdb.MapResizedError:  # another process grew the map
                self._adopt_map_size()
        raise FailedPrecondition(f"store {self.path}: the map keeps being resized by another process")

    def _begin_read(self, buffers: bool) -> lmdb.Transaction:
        if buffers:
            return self.env.begin(buffers=True)
        return self.env.begin()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction, committed when it returns, aborted when it raises.

        ``fn`` may run more than once (after a map growth), so it must not have side effects outside
        the transaction. Raising :class:`Abort` rolls back and returns its value.
        """
        self._check_open()
        if self.readonly:
            raise FailedPrecondition(f"store {self.path} is open read-only")
        with self._write_lock:
            for _attempt in range(64):
                try:
                    with self._map_lock.shared():
                        self._check_open()
                        with self.env.begin(write=True) as txn:
                            return fn(txn)
                except Abort as abort:  # the transaction was aborted on the way out
                    return cast(T, abort.value)
                except lmdb.MapFullError:
                    self._grow()
                except lmdb.MapResizedError:
                    self._adopt_map_size()
            raise ResourceExhausted(f"store {self.path}: a write kept failing after growing the map")

    def _grow(self) -> None:
        with self._map_lock.exclusive():
            current = self.map_size
            new = current * 2
            if new > self.max_map_size:
                raise ResourceExhausted(
                    f"store {self.path} is full: map size {current} bytes, limit {self.max_map_size}"
                )
            self.env.set_mapsize(new)
            LOG.info("LMDB map of %s grown from %d to %d bytes", self.path, current, new)

    def _adopt_map_size(self) -> None:
        with self._map_lock.exclusive():
            self.env.set_mapsize(0)

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"store {self.path} is closed")

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        """Close the environment (waits for running transactions of this process)."""
        if self._closed:
            return
        with self._write_lock, self._map_lock.exclusive():
            self._closed = True
            self.env.close()


def compact_copy(data_dir: Path, output: Path) -> tuple[int, int]:
    """Copy the LMDB environment of ``data_dir`` into ``output`` without its free pages.

    LMDB reuses the pages of deleted entries (an evicted embedding cache, a deleted pool) but never
    shrinks its file; a compacted copy does. Safe beside a running server (one read transaction);
    ``output`` must not hold a store yet. Returns the bytes of the data file before and after.
    """
    source = Path(data_dir) / ENV_DIRNAME / "data.mdb"
    if not source.is_file():
        raise FileNotFoundError(f"no store at {source.parent}")
    target = Path(output) / ENV_DIRNAME
    if (target / "data.mdb").exists():
        raise FileExistsError(f"{target} already holds a store")
    target.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(source.parent), readonly=True, lock=True, max_dbs=len(DATABASES) + 1, subdir=True)
    try:
        env.copy(str(target), compact=True)
    finally:
        env.close()
    return source.stat().st_size, (target / "data.mdb").stat().st_size


class Abort(Exception):  # noqa: N818 (control flow, not an error)
    """Raised inside :meth:`Env.write` to roll back and return ``value`` (e.g. "nothing changed")."""

    def __init__(self, value: object) -> None:
        super().__init__("abort")
        self.value = value
