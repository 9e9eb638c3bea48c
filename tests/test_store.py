"""LMDB candidate store: round trip, idempotent upsert, versions, bad input, map growth, crash safety."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from gotd.cache.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.vectors import content_hash
from tests._store_helpers import unit_vectors, vector_records

DIM = 32


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "data")
    yield s  # type: ignore[misc]
    s.close()


def test_round_trip_of_10k_records(tmp_path: Path) -> None:
    x = unit_vectors(10_000, DIM, seed=1)
    records = vector_records(x, domains=7, text=True)
    with Store(tmp_path) as store:
        for start in range(0, 10_000, 2_500):
            store.upsert("pool", records[start : start + 2_500], model="m", dim=DIM)
    with Store(tmp_path) as store:
        info = store.get_pool("pool")
        assert (info.count, info.version, info.model, info.dim) == (10_000, 4, "m", DIM)
        arrays = store.load_vectors("pool")
        assert arrays.vectors.dtype == np.float32
        assert arrays.vectors.flags.c_contiguous
        np.testing.assert_array_equal(arrays.vectors, x)
        assert arrays.ids == [f"r{i}" for i in range(10_000)]
        assert arrays.domains == [f"d{i % 7}" for i in range(10_000)]
        assert arrays.keys.dtype == np.uint64
        assert int(arrays.keys[123]) == xxhash.xxh64_intdigest(b"r123")
        np.testing.assert_array_equal(arrays.row_versions, np.repeat(np.arange(1, 5, dtype=np.uint64), 2_500))
        assert arrays.version == 4
        rows = store.rows_for_ids("pool", ["r9999", "r0", "r4321"])
        assert rows.tolist() == [9999, 0, 4321]
        assert store.metadata("pool", [5, 9999]) == [
            ("d5", '{"n":5}', "text 5"),
            ("d3", '{"n":9999}', "text 9999"),
        ]
        assert store.ids_for_rows("pool", [7, 2]) == ["r7", "r2"]


def test_reingest_is_idempotent_and_changes_bump_the_version_once(store: Store) -> None:
    x = unit_vectors(300, DIM)
    records = vector_records(x, text=True)
    first = store.upsert("p", records, model="m", dim=DIM)
    assert (first.inserted, first.updated, first.unchanged, first.version) == (300, 0, 0, 1)
    again = store.upsert("p", records, model="m", dim=DIM)
    assert (again.inserted, again.updated, again.unchanged, again.version) == (0, 0, 300, 1)
    assert store.get_pool("p").version == 1
    changed = [
        Record(id="r3", text="new text", embedding=x[3], meta={"n": 3}),
        Record(id="r4", text="text 4", embedding=x[5], meta={"n": 4}),
        Record(id="r5", text="text 5", embedding=x[5], meta={"n": 5}, domain="other"),
        Record(id="r6", text="text 6", embedding=x[6], meta={"n": 66}),
        Record(id="r7", text="text 7", embedding=x[7], meta={"n": 7}),
        Record(id="new", text="t", embedding=x[0]),
    ]
    result = store.upsert("p", changed, model="m", dim=DIM)
    assert (result.inserted, result.updated, result.unchanged, result.version) == (1, 4, 1, 2)
    arrays = store.load_vectors("p")
    assert arrays.row_versions[[3, 4, 5, 6, 7, 8, 300]].tolist() == [2, 2, 2, 2, 1, 1, 2]
    np.testing.assert_array_equal(arrays.vectors[4], x[5])
    assert arrays.domains[5] == "other"
    assert store.metadata("p", [3])[0][2] == "new text"
    stored = store.get_records("p", ["r3", "missing"])
    assert list(stored) == ["r3"]
    assert stored["r3"].version == 2
    assert stored["r3"].row == 3


def test_unit_vectors_are_stored_bit_exact_and_others_normalised(store: Store) -> None:
    x = unit_vectors(50, DIM, seed=4)
    store.upsert("p", vector_records(x), model="m", dim=DIM)
    np.testing.assert_array_equal(store.load_vectors("p").vectors, x)
    raw = np.random.default_rng(3).standard_normal((10, DIM)).astype(np.float32) * 7
    store.upsert("q", vector_records(raw), model="m", dim=DIM)
    np.testing.assert_allclose(np.linalg.norm(store.load_vectors("q").vectors, axis=1), 1.0, atol=1e-6)
    again = store.upsert("q", vector_records(store.load_vectors("q").vectors), model="m", dim=DIM)
    assert again.unchanged == 10


def test_float16_storage(tmp_path: Path) -> None:
    with Store(tmp_path, vector_dtype="float16") as store:
        x = unit_vectors(700, DIM)
        store.upsert("h", vector_records(x), model="m", dim=DIM)
        assert store.get_pool("h").dtype == "float16"
        got = store.load_vectors("h").vectors
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, x, atol=2e-3)
        assert store.upsert("h", vector_records(x), model="m", dim=DIM).unchanged == 700


def test_model_or_dimension_mismatch_is_failed_precondition(store: Store) -> None:
    store.upsert("p", vector_records(unit_vectors(3, DIM)), model="m", dim=DIM)
    with pytest.raises(FailedPrecondition, match="pool 'p'"):
        store.upsert("p", vector_records(unit_vectors(3, DIM)), model="other", dim=DIM)
    with pytest.raises(FailedPrecondition, match="'r0'"):
        store.upsert("p", vector_records(unit_vectors(3, 8)), model="m", dim=DIM)
    with pytest.raises(FailedPrecondition):
        store.upsert("p", vector_records(unit_vectors(3, 8)), model="m", dim=8)


def _bad_batches() -> list[tuple[str, list[Record], type[Exception], str]]:
    x = unit_vectors(5, DIM)
    nan = x.copy()
    nan[3, 0] = np.nan
    good = vector_records(x)
    return [
        ("duplicate ids", [*good, Record(id="r2", embedding=x[0])], InvalidArgument, "'r2'"),
        ("missing embedding", [*good[:2], Record(id="t", text="only text")], InvalidArgument, "'t'"),
        ("wrong dimension", [*good[:2], Record(id="w", embedding=np.ones(3))], FailedPrecondition, "'w'"),
    ]


@pytest.mark.parametrize("reason", [b[0] for b in _bad_batches()])
def test_bad_batches_write_nothing(store: Store, reason: str) -> None:
    store.upsert("p", vector_records(unit_vectors(4, DIM, seed=9), prefix="old"), model="m", dim=DIM)
    _, batch, error, names = next(b for b in _bad_batches() if b[0] == reason)
    with pytest.raises(error) as info:
        store.upsert("p", batch, model="m", dim=DIM)
    assert names in str(info.value)
    assert store.get_pool("p").count == 4
    assert store.get_pool("p").version == 1
    with pytest.raises(error):
        store.upsert("fresh", batch, model="m", dim=DIM)
    assert [p.name for p in store.list_pools()] == ["p"]


def test_nan_and_zero_vectors_passed_as_an_array_name_the_record(store: Store) -> None:
    x = unit_vectors(4, DIM)
    records = [Record(id=f"a{i}", text="t") for i in range(4)]
    for value in (np.nan, np.inf):
        bad = x.copy()
        bad[2, 1] = value
        with pytest.raises(InvalidArgument, match="'a2'"):
            store.upsert("p", records, model="m", dim=DIM, vectors=bad)
    bad = x.copy()
    bad[1] = 0
    with pytest.raises(InvalidArgument, match="'a1'"):
        store.upsert("p", records, model="m", dim=DIM, vectors=bad)
    assert store.list_pools() == []


@pytest.mark.parametrize("name", ["../x", "", ".", "a/b", "x" * 200])
def test_bad_names_are_refused_everywhere(store: Store, name: str) -> None:
    calls = [
        lambda: store.upsert(name, vector_records(unit_vectors(1, DIM)), model="m", dim=DIM),
        lambda: store.get_pool(name),
        lambda: store.delete_pool(name),
        lambda: store.load_vectors(name),
        lambda: store.put_target_set(name, ["a"], unit_vectors(1, DIM), model="m", dim=DIM),
        lambda: store.get_target_set(name),
        lambda: store.delete_target_set(name),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument):
            call()


def test_not_found(store: Store) -> None:
    for call in (
        lambda: store.get_pool("nope"),
        lambda: store.delete_pool("nope"),
        lambda: store.load_vectors("nope"),
        lambda: store.get_target_set("nope"),
        lambda: store.delete_target_set("nope"),
    ):
        with pytest.raises(NotFound, match="'nope'"):
            call()
    store.upsert("p", vector_records(unit_vectors(3, DIM)), model="m", dim=DIM)
    with pytest.raises(NotFound, match="'ghost'"):
        store.rows_for_ids("p", ["r1", "ghost"])


def test_delete_and_recreate_gives_a_fresh_pool(store: Store) -> None:
    store.upsert("b", vector_records(unit_vectors(3, DIM)), model="m", dim=DIM)
    store.upsert("a", vector_records(unit_vectors(600, DIM)), model="m", dim=DIM)
    old = store.get_pool("a")
    assert [p.name for p in store.list_pools()] == ["a", "b"]
    store.delete_pool("a")
    assert [p.name for p in store.list_pools()] == ["b"]
    store.upsert("a", vector_records(unit_vectors(2, DIM), prefix="z"), model="m2", dim=DIM)
    new = store.get_pool("a")
    assert (new.count, new.version, new.model) == (2, 1, "m2")
    assert new.uid != old.uid
    assert store.load_vectors("a").ids == ["z0", "z1"]
    assert store.load_vectors("b").ids == ["r0", "r1", "r2"]


def test_target_sets(store: Store) -> None:
    x = unit_vectors(6, DIM)
    info = store.put_target_set("t", [f"t{i}" for i in range(6)], x, model="m", dim=DIM)
    assert (info.count, info.dim, info.model) == (6, DIM, "m")
    assert info.content_hash == content_hash("m", x)
    got, ids, vectors = store.get_target_set("t")
    assert got.content_hash == info.content_hash
    assert ids == [f"t{i}" for i in range(6)]
    np.testing.assert_array_equal(vectors, x)
    replaced = store.put_target_set("t", ["a"], x[:1] * 2, model="m", dim=DIM)
    assert replaced.count == 1
    assert replaced.content_hash == content_hash("m", x[:1])
    assert [t.name for t in store.list_target_sets()] == ["t"]
    with pytest.raises(InvalidArgument, match="duplicate id 'a'"):
        store.put_target_set("u", ["a", "a"], x[:2], model="m", dim=DIM)
    with pytest.raises(FailedPrecondition):
        store.put_target_set("u", ["a"], x[:1], model="m", dim=DIM + 1)
    with pytest.raises(InvalidArgument, match="'b'"):
        store.put_target_set("u", ["a", "b"], np.stack([x[0], np.full(DIM, np.nan)]), model="m", dim=DIM)
    store.delete_target_set("t")
    with pytest.raises(NotFound):
        store.get_target_set("t")


def test_map_grows_from_a_tiny_size_with_concurrent_readers(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=64 * 1024)
    store.upsert("p", vector_records(unit_vectors(10, 64)), model="m", dim=64)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                arrays = store.load_vectors("p")
                assert len(arrays.ids) == arrays.vectors.shape[0]
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for b in range(8):
            store.upsert(
                "p", vector_records(unit_vectors(500, 64, seed=b), prefix=f"b{b}-"), model="m", dim=64
            )
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not errors
    assert store.env.map_size > 64 * 1024
    assert store.get_pool("p").count == 4010
    store.close()
    with Store(tmp_path, map_size=64 * 1024) as again:
        assert again.load_vectors("p").vectors.shape == (4010, 64)


def test_map_limit_is_resource_exhausted_and_writes_nothing(tmp_path: Path) -> None:
    with Store(tmp_path, map_size=256 * 1024, max_map_size=512 * 1024) as store:
        store.upsert("p", vector_records(unit_vectors(10, 64)), model="m", dim=64)
        with pytest.raises(ResourceExhausted):
            store.upsert("p", vector_records(unit_vectors(3000, 64), prefix="big"), model="m", dim=64)
        assert store.get_pool("p").count == 10
        assert (
            store.upsert("p", vector_records(unit_vectors(5, 64), prefix="s"), model="m", dim=64).inserted
            == 5
        )


def test_readonly(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Store(tmp_path / "none", readonly=True)
    with Store(tmp_path) as store:
        store.upsert("p", vector_records(unit_vectors(3, DIM)), model="m", dim=DIM)
    with Store(tmp_path, readonly=True) as ro:
        assert ro.get_pool("p").count == 3
        with pytest.raises(FailedPrecondition, match="read-only"):
            ro.upsert("p", vector_records(unit_vectors(1, DIM)), model="m", dim=DIM)
    store = Store(tmp_path)
    store.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        store.get_pool("p")


_ops = st.lists(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 2), st.sampled_from(["", "x"])), min_size=1, max_size=5
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(batches=_ops)
def test_upserts_match_a_dictionary_model(batches: list[list[tuple[int, int, str]]]) -> None:
    basis = unit_vectors(3, 8, seed=11)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp)) as store:
        model: dict[str, tuple[int, str]] = {}
        order: list[str] = []
        version = 0
        for batch in batches:
            unique = {f"k{k}": (v, d) for k, v, d in batch}
            records = [Record(id=k, embedding=basis[v], domain=d) for k, (v, d) in unique.items()]
            changed = any(model.get(k) != val for k, val in unique.items())
            result = store.upsert("p", records, model="m", dim=8)
            version += int(changed)
            assert result.version == version
            for k, val in unique.items():
                if k not in model:
                    order.append(k)
                model[k] = val
        arrays = store.load_vectors("p")
        assert arrays.ids == order
        assert arrays.domains == [model[k][1] for k in order]
        np.testing.assert_array_equal(arrays.vectors, basis[[model[k][0] for k in order]])
