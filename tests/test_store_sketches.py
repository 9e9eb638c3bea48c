"""Stored n-gram sketches: per-candidate rows written with the vectors, per-target rows in the target set."""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import lmdb
import numpy as np
import pytest

from gotd.cache.errors import InvalidArgument, NotFound
from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.layout import PoolRecord
from gotd.cache.store.sketch import SKETCH_DB
from gotd.cache.store.vectors import content_hash
from gotd.server.selection.sketches import SKETCH_BUCKETS, tf_rows, tf_sparse
from tests._store_helpers import dense_sketches, unit_vectors

DIM = 16


def _records(n: int, *, start: int = 0, text: str | None = "doc", seed: int = 0) -> list[Record]:
    x = unit_vectors(n, DIM, seed=seed)
    return [
        Record(
            id=f"r{start + i}",
            text=None if text is None else f"{text} {start + i} about topic {(start + i) % 7}",
            embedding=x[i],
        )
        for i in range(n)
    ]


def _chunk_keys(store: Store, pool: str) -> list[bytes]:
    """Keys of the pool's chunks in the sketches database."""
    prefix = store.env.read(
        lambda txn: PoolRecord.decode(pool, txn.get(pool.encode(), db=store.env.dbs["pools"]))
    )
    with store.env.env.begin() as txn, txn.cursor(db=store.env.dbs[SKETCH_DB]) as cur:
        return [bytes(k) for k, _ in cur if bytes(k)[:8] == prefix.prefix]


@pytest.fixture(params=[tf_rows, tf_sparse], ids=["dense-sketcher", "sparse-sketcher"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    s = Store(tmp_path, sketcher=request.param)
    yield s  # type: ignore[misc]
    s.close()


def test_text_rows_are_tf_rows_and_vector_only_rows_are_zero(store: Store) -> None:
    texts = _records(5)
    bare = _records(3, start=5, text=None, seed=1)
    mixed = [texts[0], bare[0], texts[1], texts[2], bare[1], texts[3], bare[2], texts[4]]
    store.upsert("p", mixed, model="m", dim=DIM)
    arrays = store.load_vectors("p")
    assert arrays.sketches is not None
    assert dense_sketches(arrays).shape == (8, SKETCH_BUCKETS)
    assert dense_sketches(arrays).dtype == np.float16
    np.testing.assert_array_equal(dense_sketches(arrays), tf_rows([r.text for r in mixed]))
    assert not dense_sketches(arrays)[[1, 4, 6]].any()
    assert dense_sketches(arrays)[[0, 2, 3, 5, 7]].any(axis=1).all()
    assert store.load_vectors("p", sketches=False).sketches is None


def test_vector_only_pool_stores_no_sketch_bytes(store: Store) -> None:
    store.upsert("v", _records(600, text=None), model="m", dim=DIM)
    assert _chunk_keys(store, "v") == []
    arrays = store.load_vectors("v")
    assert arrays.sketches is None  # no sketch row stored: no zero array in memory either
    store.upsert(
        "v", [Record(id="r599", text="late text", embedding=arrays.vectors[599])], model="m", dim=DIM
    )
    got = dense_sketches(store.load_vectors("v"))
    assert got is not None
    assert got.shape == (600, SKETCH_BUCKETS)
    np.testing.assert_array_equal(got[599], tf_rows(["late text"])[0])
    assert not got[:599].any()
    assert len(_chunk_keys(store, "v")) == 1


def test_a_vector_only_batch_zeroes_the_rows_it_rewrites_in_any_order(store: Store) -> None:
    texts = _records(6)
    store.upsert("p", texts, model="m", dim=DIM)
    # a new record first, then rewrites of rows 4 and 1 without text: written rows are not batch order
    bare = [*_records(1, start=6, text=None, seed=2), *(_records(6, text=None, seed=3)[i] for i in (4, 1))]
    result = store.upsert("p", bare, model="m", dim=DIM)
    assert (result.inserted, result.updated, result.unchanged) == (1, 2, 0)
    arrays = store.load_vectors("p")
    assert arrays.ids == [f"r{i}" for i in range(7)]
    assert arrays.sketches is not None
    assert not dense_sketches(arrays)[[1, 4, 6]].any()
    np.testing.assert_array_equal(
        dense_sketches(arrays)[[0, 2, 3, 5]], tf_rows([texts[i].text for i in (0, 2, 3, 5)])
    )
    for i, record in zip((6, 4, 1), bare, strict=True):
        np.testing.assert_array_equal(arrays.vectors[i], record.embedding)
        assert store.get_records("p", [record.id])[record.id].text is None


def test_updates_replace_rows_and_unchanged_rows_stay(store: Store) -> None:
    records = _records(700)  # three sketch chunks of 256 rows
    for start in range(0, 700, 300):
        store.upsert("p", records[start : start + 300], model="m", dim=DIM)
    before = store.load_vectors("p")
    assert before.sketches is not None
    np.testing.assert_array_equal(dense_sketches(before), tf_rows([r.text for r in records]))
    assert len(_chunk_keys(store, "p")) == 3
    changed = [
        Record(id="r3", text="a brand new text", embedding=records[3].embedding),
        Record(id="r300", text=None, embedding=records[300].embedding),  # text removed: zero row
        Record(id="r699", text="the last one changed", embedding=records[699].embedding),
        records[10],  # unchanged
        Record(id="n0", text="a new record", embedding=records[0].embedding),
    ]
    result = store.upsert("p", changed, model="m", dim=DIM)
    assert (result.inserted, result.updated, result.unchanged) == (1, 3, 1)
    after = store.load_vectors("p")
    assert after.sketches is not None
    assert dense_sketches(after).shape == (701, SKETCH_BUCKETS)
    np.testing.assert_array_equal(dense_sketches(after)[3], tf_rows(["a brand new text"])[0])
    assert not dense_sketches(after)[300].any()
    np.testing.assert_array_equal(dense_sketches(after)[699], tf_rows(["the last one changed"])[0])
    np.testing.assert_array_equal(dense_sketches(after)[700], tf_rows(["a new record"])[0])
    untouched = np.setdiff1d(np.arange(700), [3, 300, 699])
    np.testing.assert_array_equal(dense_sketches(after)[untouched], dense_sketches(before)[untouched])
    again = store.upsert("p", changed, model="m", dim=DIM)
    assert again.unchanged == 5
    reloaded = dense_sketches(store.load_vectors("p"))
    assert reloaded is not None
    np.testing.assert_array_equal(reloaded, dense_sketches(after))


def test_sketches_survive_reopening_even_without_a_sketch_function(tmp_path: Path) -> None:
    records = _records(300)
    with Store(tmp_path, sketcher=tf_rows) as store:
        store.upsert("p", records, model="m", dim=DIM)
    with Store(tmp_path) as store:
        got = dense_sketches(store.load_vectors("p"))
        assert got is not None
        np.testing.assert_array_equal(got, tf_rows([r.text for r in records]))
        # a store without a sketch function writes zero rows into a pool that keeps sketches
        store.upsert(
            "p", [Record(id="r7", text="changed", embedding=records[7].embedding)], model="m", dim=DIM
        )
        later = dense_sketches(store.load_vectors("p"))
        assert later is not None
        assert not later[7].any()
        np.testing.assert_array_equal(np.delete(later, 7, axis=0), np.delete(got, 7, axis=0))
        # and creates pools without sketches
        store.upsert("plain", records[:3], model="m", dim=DIM)
        assert store.load_vectors("plain").sketches is None
    with Store(tmp_path, readonly=True) as ro:
        assert ro.load_vectors("p").sketches is not None


def test_a_batch_of_another_width_is_stored_as_zero_rows(tmp_path: Path) -> None:
    records = _records(4)
    with Store(tmp_path, sketcher=functools.partial(tf_rows, buckets=64)) as store:
        store.upsert("p", records, model="m", dim=DIM)
        got = dense_sketches(store.load_vectors("p"))
        assert got is not None
        assert got.shape == (4, 64)
    with Store(tmp_path, sketcher=tf_rows) as store:
        store.upsert("p", [Record(id="r1", text="other", embedding=records[1].embedding)], model="m", dim=DIM)
        later = dense_sketches(store.load_vectors("p"))
        assert later is not None
        assert later.shape == (4, 64)
        assert not later[1].any()
        np.testing.assert_array_equal(later[[0, 2, 3]], got[[0, 2, 3]])


def test_delete_pool_removes_its_sketch_chunks(store: Store) -> None:
    store.upsert("p", _records(600), model="m", dim=DIM)
    store.upsert("q", _records(3), model="m", dim=DIM)
    assert len(_chunk_keys(store, "p")) == 3
    with store.env.env.begin() as txn:
        total = txn.stat(store.env.dbs[SKETCH_DB])["entries"]
    store.delete_pool("p")
    with store.env.env.begin() as txn:
        assert txn.stat(store.env.dbs[SKETCH_DB])["entries"] == total - 3
    store.upsert("p", _records(2, text=None), model="m", dim=DIM)
    assert store.load_vectors("p").sketches is None  # no chunk of the deleted incarnation is read
    assert store.load_vectors("q").sketches is not None


def test_a_pool_written_before_sketches_loads_without_and_stays_so(store: Store) -> None:
    records = _records(40)
    store.upsert("old", records[:20], model="m", dim=DIM)
    key = b"old"

    def downgrade(txn: lmdb.Transaction) -> None:
        body = json.loads(bytes(txn.get(key, db=store.env.dbs["pools"])))
        del body["sketch_buckets"], body["sketch_rows"]
        txn.put(key, json.dumps(body).encode(), db=store.env.dbs["pools"])
        prefix = PoolRecord.decode("old", json.dumps(body).encode()).prefix
        with txn.cursor(db=store.env.dbs[SKETCH_DB]) as cur:
            for k in [bytes(k) for k, _ in cur if bytes(k)[:8] == prefix]:
                txn.delete(k, db=store.env.dbs[SKETCH_DB])

    store.env.write(downgrade)
    assert _chunk_keys(store, "old") == []
    arrays = store.load_vectors("old")
    assert arrays.sketches is None
    assert arrays.ids == [f"r{i}" for i in range(20)]
    store.upsert("old", records[20:], model="m", dim=DIM)
    assert store.load_vectors("old").sketches is None
    assert _chunk_keys(store, "old") == []


def test_read_only_open_of_a_store_without_the_sketches_database(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=tf_rows) as store:
        store.upsert("p", _records(5), model="m", dim=DIM)
        store.put_target_set("t", ["a"], unit_vectors(1, DIM), model="m", dim=DIM, texts=["x"])

        def drop(txn: lmdb.Transaction) -> None:
            txn.drop(store.env.dbs[SKETCH_DB], delete=True)

        store.env.write(drop)
    with Store(tmp_path, readonly=True) as ro:
        assert SKETCH_DB not in ro.env.dbs
        arrays = ro.load_vectors("p")
        assert arrays.sketches is None
        assert arrays.ids == [f"r{i}" for i in range(5)]
        assert ro.get_target_sketches("t") is not None
    with Store(tmp_path) as rw:  # a read-write open creates it again
        assert SKETCH_DB in rw.env.dbs


def test_target_sets_with_and_without_texts(store: Store) -> None:
    x = unit_vectors(4, DIM, seed=3)
    texts = ["first target", None, "", "fourth target text"]
    info = store.put_target_set("t", ["a", "b", "c", "d"], x, model="m", dim=DIM, texts=texts)
    assert info.content_hash == content_hash("m", x)
    got, ids, vectors = store.get_target_set("t")
    assert (got, ids) == (info, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(vectors, x)
    sketches = store.get_target_sketches("t")
    assert sketches is not None
    assert sketches.shape == (4, SKETCH_BUCKETS)
    np.testing.assert_array_equal(sketches, tf_rows(texts))
    assert not sketches[[1, 2]].any()
    assert [t.name for t in store.list_target_sets()] == ["t"]
    store.put_target_set("t", ["a"], x[:1], model="m", dim=DIM)  # replaced without texts
    assert store.get_target_sketches("t") is None
    assert store.get_target_set("t")[1] == ["a"]
    with pytest.raises(InvalidArgument, match="2 texts for 1 ids"):
        store.put_target_set("u", ["a"], x[:1], model="m", dim=DIM, texts=["x", "y"])
    with pytest.raises(NotFound):
        store.get_target_sketches("nope")


def test_target_texts_without_a_sketch_function_store_no_sketches(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.put_target_set("t", ["a"], unit_vectors(1, DIM), model="m", dim=DIM, texts=["some text"])
        assert store.get_target_sketches("t") is None


def test_an_old_format_target_set_still_decodes(store: Store) -> None:
    x = unit_vectors(3, DIM, seed=4)
    header = json.dumps(
        {"count": 3, "model": "m", "dim": DIM, "content_hash": content_hash("m", x), "created": 1.5}
    ).encode()
    ids = json.dumps(["a", "b", "c"]).encode()
    u32 = struct.Struct("<I")
    blob = u32.pack(len(header)) + header + u32.pack(len(ids)) + ids + x.astype("<f4").tobytes()
    store.env.write(lambda txn: txn.put(b"old", blob, db=store.env.dbs["targets"]))
    info, got_ids, vectors = store.get_target_set("old")
    assert (info.count, info.created, got_ids) == (3, 1.5, ["a", "b", "c"])
    np.testing.assert_array_equal(vectors, x)
    assert store.get_target_sketches("old") is None


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_sketch_function_returning_non_finite_values_is_refused(tmp_path: Path, bad: float) -> None:
    def sketcher(texts: object) -> np.ndarray:
        rows = np.full((len(texts), 8), 65504.0, dtype=np.float16)  # type: ignore[arg-type]
        rows[-1, 3] = bad
        return rows

    with Store(tmp_path, sketcher=sketcher) as s, pytest.raises(ValueError, match="non-finite"):
        s.upsert("p", _records(2), model="m", dim=DIM)


def test_the_largest_finite_float16_sketch_values_are_stored(tmp_path: Path) -> None:
    rows = np.array([[65504.0, -65504.0, 0.0, -0.0], [6e-8, -6e-8, 1.0, -1.0]], dtype=np.float16)
    with Store(tmp_path, sketcher=lambda texts: rows[: len(texts)]) as s:
        s.upsert("p", _records(2), model="m", dim=DIM)
        got = dense_sketches(s.load_vectors("p"))
    assert got is not None
    assert np.array_equal(got.view(np.uint16), rows.view(np.uint16))
