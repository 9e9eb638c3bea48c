"""The store's per-pool sketch statistics (document frequency over the live rows, zero rows) equal what
a pass over the loaded rows computes, after every kind of write; absent or out of date, they are None."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.layout import PoolRecord
from gotd.cache.store.sketchstats import put_stats, stats_key, stats_of
from gotd.server.selection.costs import SketchFactors, complete_sketches
from gotd.server.selection.sketches import document_frequency, idf_from_df, tf_rows
from tests._store_helpers import unit_vectors
from tests.test_store_backfill import StopBackfillError, _old_pool, _stop_after

DIM = 16  # as the backfill tests' pools


def _records(texts: Sequence[str | None], *, start: int = 0, seed: int = 0) -> list[Record]:
    x = unit_vectors(len(texts), DIM, seed=seed)
    return [Record(id=f"r{start + i}", text=t, embedding=x[i]) for i, t in enumerate(texts)]


def _texts(n: int, *, start: int = 0, tag: str = "doc") -> list[str | None]:
    return [
        None if (start + i) % 5 == 2 else f"{tag} {start + i} on topic {(start + i) % 9}" for i in range(n)
    ]


def _check(store: Store, pool: str = "p") -> None:
    """The stored statistics are those of the loaded rows: document frequency and IDF over the live
    rows, zero rows over all, and ``sketch_rows`` reads what the snapshot holds."""
    arrays = store.load_vectors(pool)
    sparse = arrays.sketches
    assert sparse is not None
    tf = sparse.dense()
    assert complete_sketches(sparse) == complete_sketches(tf)
    np.testing.assert_array_equal(document_frequency(sparse), document_frequency(tf))
    stats = store.sketch_stats(pool, arrays.uid, arrays.version)
    assert stats is not None
    live = np.ones(len(tf), dtype=bool) if arrays.deleted is None else ~arrays.deleted
    np.testing.assert_array_equal(stats.df, document_frequency(tf[live]))
    zero = [not complete_sketches(tf[i : i + 1]) for i in range(len(tf))]
    assert stats.zero_rows == sum(zero)
    assert (stats.zero_rows == 0) == complete_sketches(tf)
    expected = SketchFactors.pool_idf(sparse, arrays.deleted)
    np.testing.assert_array_equal(idf_from_df(stats.df, int(live.sum())), expected)  # bit for bit
    rows = np.arange(0, len(tf), 3, dtype=np.int64)
    got = store.sketch_rows(pool, arrays.uid, arrays.version, rows)
    assert got is not None
    np.testing.assert_array_equal(got, tf[rows])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path, sketcher=tf_rows)
    yield s  # type: ignore[misc]
    s.close()


def test_stats_follow_appends_updates_deletes_and_revivals(store: Store) -> None:
    store.upsert("p", _records(_texts(600)), model="m", dim=DIM)  # three sketch chunks, some rows bare
    _check(store)
    store.upsert("p", _records(_texts(300, start=600), start=600, seed=1), model="m", dim=DIM)  # appended
    _check(store)
    changed = _texts(40, start=100, tag="other") + [None] * 10  # new texts, and texts dropped
    store.upsert("p", _records(changed, start=100, seed=2), model="m", dim=DIM)
    _check(store)
    store.delete_records("p", [f"r{i}" for i in range(50, 400, 7)] + ["nope"])
    _check(store)
    revived = _texts(20, start=50, tag="back")
    store.upsert("p", _records(revived, start=50, seed=3), model="m", dim=DIM)  # some deleted, some not
    _check(store)
    mixed = _records(_texts(10, start=895), start=895, seed=4)  # five updated, five appended
    store.upsert("p", mixed, model="m", dim=DIM)
    _check(store)


def test_rows_written_without_a_sketch_function_are_zero_rows(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=tf_rows) as store:
        store.upsert("p", _records(_texts(30)), model="m", dim=DIM)
    with Store(tmp_path) as store:
        store.upsert("p", _records(_texts(30, start=20), start=20, seed=1), model="m", dim=DIM)
    with Store(tmp_path, sketcher=tf_rows) as store:
        _check(store)
        assert store.backfill_sketches("p").rows_sketched > 0
        _check(store)


def test_a_backfilled_pool_has_stats_and_none_while_the_backfill_is_under_way(tmp_path: Path) -> None:
    _old_pool(tmp_path)
    with Store(tmp_path, sketcher=tf_rows) as store:
        info = store.get_pool("p")
        assert store.sketch_stats("p", info.uid, info.version) is None  # no sketches kept yet
        with pytest.raises(StopBackfillError):
            store.backfill_sketches("p", batch_rows=256, progress=_stop_after(1))
        info = store.get_pool("p")
        assert store.sketch_stats("p", info.uid, info.version) is None  # rows change without a bump
        assert store.sketch_rows("p", info.uid, info.version, np.arange(3)) is None
        store.upsert("p", _records(["written meanwhile"], start=5, seed=9), model="m", dim=DIM)
        store.delete_records("p", ["r9"])
        store.backfill_sketches("p", batch_rows=256)
        _check(store)


def test_stats_of_an_older_store_stay_absent_and_a_moved_pool_reads_none(store: Store) -> None:
    store.upsert("p", _records(_texts(20)), model="m", dim=DIM)
    info = store.get_pool("p")
    assert store.sketch_stats("p", info.uid, info.version - 1) is None  # another version
    assert store.sketch_stats("p", "another-uid", info.version) is None
    assert store.sketch_stats("nope", info.uid, info.version) is None
    raw = store.env.read(lambda txn: txn.get(b"p", db=store.env.dbs["pools"]))
    prefix = PoolRecord.decode("p", raw).prefix
    store.env.write(lambda txn: txn.delete(stats_key(prefix), db=store.env.dbs["meta"]))  # an older gotd
    store.upsert("p", _records(_texts(5, start=20), start=20), model="m", dim=DIM)
    info = store.get_pool("p")
    assert store.sketch_stats("p", info.uid, info.version) is None  # no pass over the rows to rebuild
    assert store.sketch_rows("p", info.uid, info.version, np.arange(3)) is None
    store.delete_pool("p")
    assert store.env.read(lambda txn: txn.get(stats_key(prefix), db=store.env.dbs["meta"])) is None


def test_stats_follow_writes_into_first_format_chunks(tmp_path: Path) -> None:
    from tests.test_sketch_formats import to_first_format

    with Store(tmp_path, sketcher=tf_rows) as store:
        store.upsert("p", _records(_texts(600)), model="m", dim=DIM)
    assert to_first_format(tmp_path) == 3  # dense chunks, as gotd wrote them before the sparse encoding
    with Store(tmp_path, sketcher=tf_rows) as store:
        _check(store)  # the rows read from dense chunks
        store.upsert("p", _records(_texts(30, start=290, tag="new"), start=290, seed=5), model="m", dim=DIM)
        store.delete_records("p", [f"r{i}" for i in range(500, 600, 9)])
        _check(store)


def _forget(store: Store, pool: str = "p") -> bytes:
    """Drop the statistics of ``pool`` (as an older gotd left it); its key prefix."""
    raw = store.env.read(lambda txn: txn.get(pool.encode(), db=store.env.dbs["pools"]))
    prefix = PoolRecord.decode(pool, raw).prefix
    store.env.write(lambda txn: txn.delete(stats_key(prefix), db=store.env.dbs["meta"]))
    return prefix


def test_stats_built_from_the_rows_of_an_older_pool_are_those_the_writes_keep(store: Store) -> None:
    store.upsert("p", _records(_texts(700)), model="m", dim=DIM)
    store.delete_records("p", [f"r{i}" for i in range(0, 700, 11)])
    info = store.get_pool("p")
    kept = store.sketch_stats("p", info.uid, info.version)
    assert kept is not None
    _forget(store)
    assert store.sketch_stats("p", info.uid, info.version) is None
    arrays = store.load_vectors("p")
    assert arrays.sketches is not None
    built = stats_of(arrays.version, arrays.sketches, arrays.deleted)
    assert (built.version, built.zero_rows) == (kept.version, kept.zero_rows)
    np.testing.assert_array_equal(built.df, kept.df)
    assert not store.put_sketch_stats("p", "another-uid", built)
    assert store.put_sketch_stats("p", arrays.uid, built)
    assert not store.put_sketch_stats("p", arrays.uid, built)  # kept already: left as they are
    _check(store)  # a pass over the rows
    store.upsert("p", _records(_texts(40, start=690, tag="new"), start=690, seed=3), model="m", dim=DIM)
    _check(store)  # from now on the writes keep them


def test_a_write_racing_with_the_build_leaves_the_stats_absent_never_wrong(store: Store) -> None:
    store.upsert("p", _records(_texts(300)), model="m", dim=DIM)
    prefix = _forget(store)
    arrays = store.load_vectors("p")
    assert arrays.sketches is not None
    built = stats_of(arrays.version, arrays.sketches, arrays.deleted)  # the rows of this version...
    store.upsert("p", _records(_texts(50, start=280, tag="raced"), start=280, seed=9), model="m", dim=DIM)
    store.delete_records("p", ["r3"])  # ...which a write changes before they are stored
    assert not store.put_sketch_stats("p", arrays.uid, built)
    info = store.get_pool("p")
    assert store.sketch_stats("p", info.uid, info.version) is None
    assert store.env.read(lambda txn: txn.get(stats_key(prefix), db=store.env.dbs["meta"])) is None
    meta = store.env.dbs["meta"]
    assert not store.env.write(lambda txn: put_stats(txn, meta, None, arrays.uid, built))  # pool gone
    fresh = store.load_vectors("p")
    assert fresh.sketches is not None
    assert store.put_sketch_stats("p", fresh.uid, stats_of(fresh.version, fresh.sketches, fresh.deleted))
    _check(store)


def test_no_stats_are_stored_while_a_backfill_is_under_way(tmp_path: Path) -> None:
    _old_pool(tmp_path)
    with Store(tmp_path, sketcher=tf_rows) as store:
        with pytest.raises(StopBackfillError):
            store.backfill_sketches("p", batch_rows=256, progress=_stop_after(1))
        arrays = store.load_vectors("p")
        assert arrays.sketches is not None
        assert not store.put_sketch_stats(
            "p", arrays.uid, stats_of(arrays.version, arrays.sketches, arrays.deleted)
        )
        assert store.sketch_stats("p", arrays.uid, arrays.version) is None
