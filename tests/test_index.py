"""FAISS index per pool: manifest, atomic files, rebuild on mismatch or corruption; k-means summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.errors import InvalidArgument, NotFound
from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.index import (
    INDEX_FILE,
    MANIFEST_FILE,
    IndexManager,
    ensure_index,
    kmeans_summary,
    search,
)
from tests._store_helpers import unit_vectors, vector_records

DIM = 24


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    s.upsert("p", vector_records(unit_vectors(400, DIM)), model="m", dim=DIM)
    yield s  # type: ignore[misc]
    s.close()


def _manifest(store: Store) -> dict[str, object]:
    data: dict[str, object] = json.loads((store.index_dir("p") / MANIFEST_FILE).read_text())
    return data


def test_search_finds_each_vector_first(store: Store) -> None:
    x = unit_vectors(400, DIM)
    manager = IndexManager(store)
    result = manager.search("p", x[[5, 77, 399]], 3)
    assert result.rows[:, 0].tolist() == [5, 77, 399]
    assert [ids[0] for ids in result.ids] == ["r5", "r77", "r399"]
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)
    assert manager.builds == 1
    manifest = _manifest(store)
    assert (manifest["version"], manifest["count"], manifest["dim"], manifest["factory"]) == (
        1,
        400,
        DIM,
        "Flat",
    )
    assert not [p for p in store.index_dir("p").iterdir() if p.name.endswith(".tmp")]


def test_index_on_disk_is_reused_by_a_new_manager(store: Store) -> None:
    IndexManager(store).ensure("p")
    assert search(store, "p", unit_vectors(400, DIM)[[3]], 1).ids == [["r3"]]
    again = IndexManager(store)
    assert again.ensure("p").ntotal == 400
    assert again.builds == 0


def test_manifest_version_mismatch_rebuilds(store: Store) -> None:
    IndexManager(store).ensure("p")
    path = store.index_dir("p") / MANIFEST_FILE
    manifest = _manifest(store)
    manifest["version"] = 99
    path.write_text(json.dumps(manifest))
    manager = IndexManager(store)
    assert manager.ensure("p").ntotal == 400
    assert manager.builds == 1
    assert _manifest(store)["version"] == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "garbage manifest"])
def test_corrupt_or_missing_files_rebuild(store: Store, damage: str) -> None:
    IndexManager(store).ensure("p")
    index_file = store.index_dir("p") / INDEX_FILE
    data = bytearray(index_file.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        index_file.write_bytes(bytes(data))
    elif damage == "truncate":
        index_file.write_bytes(bytes(data[:100]))
    elif damage == "delete":
        index_file.unlink()
    else:
        (store.index_dir("p") / MANIFEST_FILE).write_text("{not json")
    manager = IndexManager(store)
    assert manager.search("p", unit_vectors(400, DIM)[[9]], 1).rows[0, 0] == 9
    assert manager.builds == 1


def test_appends_extend_and_updates_rebuild(store: Store) -> None:
    manager = IndexManager(store)
    manager.ensure("p")
    store.upsert("p", vector_records(unit_vectors(50, DIM, seed=5), prefix="n"), model="m", dim=DIM)
    assert manager.ensure("p").ntotal == 450
    assert (manager.builds, manager.extends) == (1, 1)
    assert manager.search("p", unit_vectors(50, DIM, seed=5)[[7]], 1).ids == [["n7"]]
    store.upsert("p", [Record(id="r3", embedding=unit_vectors(1, DIM, seed=8)[0])], model="m", dim=DIM)
    assert manager.search("p", unit_vectors(1, DIM, seed=8), 1).ids == [["r3"]]
    assert (manager.builds, manager.extends) == (2, 1)
    assert _manifest(store)["version"] == 3


def test_recreated_pool_is_never_served_a_stale_index(store: Store) -> None:
    ensure_index(store, "p")
    store.delete_pool("p")
    assert not store.index_dir("p").exists()
    store.upsert("p", vector_records(unit_vectors(400, DIM, seed=2)), model="m", dim=DIM)
    manager = IndexManager(store)
    assert manager.search("p", unit_vectors(400, DIM, seed=2)[[11]], 1).rows[0, 0] == 11
    assert manager.builds == 1


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16"])
def test_other_factories(store: Store, factory: str) -> None:
    manager = IndexManager(store, factory=factory)
    result = manager.search("p", unit_vectors(400, DIM)[[42]], 5)
    assert 42 in result.rows[0].tolist()
    assert _manifest(store)["factory"] == factory


def test_bad_arguments(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="factory"):
        IndexManager(store, factory="NoSuchIndex").ensure("p")
    manager = IndexManager(store)
    with pytest.raises(InvalidArgument):
        manager.search("p", np.ones((1, DIM + 1), np.float32), 2)
    with pytest.raises(InvalidArgument):
        manager.search("p", np.ones((1, DIM), np.float32), 0)
    with pytest.raises(NotFound):
        manager.ensure("absent")
    wide = manager.search("p", np.ones((1, DIM), np.float32), 500)
    assert (wide.rows[0] >= 0).sum() == 400
    assert len(wide.ids[0]) == 400


def test_kmeans_summary_is_deterministic_and_weighted() -> None:
    x = unit_vectors(1500, DIM, seed=3)
    c1, w1, l1 = kmeans_summary(x, 16, seed=7)
    c2, w2, l2 = kmeans_summary(x, 16, seed=7)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(w1, w2)
    assert c1.dtype == np.float32
    assert c1.shape[1] == DIM
    assert w1.dtype == np.float32
    assert l1.dtype == np.int64
    assert abs(float(w1.sum()) - 1.0) < 1e-6
    np.testing.assert_allclose(w1, np.bincount(l1, minlength=len(c1)) / 1500)
    assert l1.min() == 0
    assert l1.max() == len(c1) - 1


def test_kmeans_summary_with_k_at_least_n() -> None:
    x = unit_vectors(5, DIM)
    centroids, weights, labels = kmeans_summary(x, 10, seed=0)
    np.testing.assert_array_equal(centroids, x)
    np.testing.assert_allclose(weights, 0.2)
    assert labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InvalidArgument):
        kmeans_summary(x, 0, seed=0)
