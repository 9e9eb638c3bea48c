"""Snapshots that grow: a new version's snapshot is the previous one patched with the rows written
since (the store's change log), equal field for field to a whole reload, and the older snapshot is
never touched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gotd.cache.records import Record
from gotd.cache.store.core import PoolArrays, Store
from tests._store_helpers import dense_sketches
from tests.conftest import clustered

DIM = 16


def _sketch(texts: Sequence[str | None]) -> np.ndarray:
    out = np.zeros((len(texts), 8), dtype=np.float32)
    for i, t in enumerate(texts):
        for ch in t or "":
            out[i, ord(ch) % 8] += 1
    return out


def _records(prefix: str, n: int, seed: int, start: int = 0, *, texts: bool = True) -> list[Record]:
    x = clustered(n, seed=seed, dim=DIM)
    return [
        Record(
            id=f"{prefix}{start + i:04d}",
            embedding=x[i],
            domain=f"d{i % 3}",
            text=f"text {prefix} {seed} {i}" if texts else None,
        )
        for i in range(n)
    ]


def _upsert(store: Store, records: list[Record]) -> int:
    return store.upsert("p", records, model="m", dim=DIM).version


def _same(a: PoolArrays, b: PoolArrays) -> None:
    assert (a.version, a.uid, a.ids, a.domains) == (b.version, b.uid, b.ids, b.domains)
    assert (a.sketches is None) == (b.sketches is None)
    if a.sketches is not None and b.sketches is not None:  # sparse rows: the same entries, the same types
        assert a.sketches.width == b.sketches.width
        for part in ("indptr", "indices", "values"):
            left, right = getattr(a.sketches, part), getattr(b.sketches, part)
            assert left.dtype == right.dtype, part
            assert np.array_equal(left.view(np.uint8), right.view(np.uint8)), part
    for name in ("vectors", "keys", "row_versions", "deleted"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            assert np.array_equal(left, right), name
            assert left.dtype == right.dtype, name


def test_grown_snapshots_equal_a_reload_and_leave_the_old_one_alone(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=_sketch) as store:
        _upsert(store, _records("a", 100, seed=1))
        base = store.load_vectors("p")
        kept = {
            name: np.array(getattr(base, name), copy=True) for name in ("vectors", "keys", "row_versions")
        }
        kept_ids = list(base.ids)
        _upsert(store, _records("b", 10, seed=2) + _records("a", 3, seed=3, start=5))  # 10 new, 3 changed
        grown = store.load_vectors("p", base=base)
        _same(grown, store.load_vectors("p"))
        _upsert(store, _records("c", 7, seed=4))  # appended only: written into spare capacity
        again = store.load_vectors("p", base=grown)
        _same(again, store.load_vectors("p"))
        branch = store.load_vectors("p", base=base)  # from the same base again: no aliasing with `again`
        _same(branch, again)
        _upsert(store, _records("d", 4, seed=5))
        _same(store.load_vectors("p", base=again), store.load_vectors("p"))
        _same(store.load_vectors("p", base=branch), store.load_vectors("p"))
        _same(again, branch)  # both unchanged by the later growths
        for name, values in kept.items():
            assert np.array_equal(getattr(base, name), values), name
        assert base.ids == kept_ids
        assert store.load_vectors("p", base=store.load_vectors("p")).version == store.get_pool("p").version


def test_another_incarnation_or_no_log_reloads(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _upsert(store, _records("a", 20, seed=1))
        old = store.load_vectors("p")
        store.delete_pool("p")
        _upsert(store, _records("z", 5, seed=2))
        _same(store.load_vectors("p", base=old), store.load_vectors("p"))
        current = store.load_vectors("p")
        store.env.write(lambda txn: txn.drop(store.env.dbs["changes"], delete=False))  # as an older gotd
        _upsert(store, _records("y", 5, seed=3))
        _same(store.load_vectors("p", base=current), store.load_vectors("p"))


def test_deletes_and_revivals_grow_snapshots_like_a_reload(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=_sketch) as store:
        _upsert(store, _records("a", 100, seed=1))
        base = store.load_vectors("p")
        versions_before = base.row_versions.copy()
        result = store.delete_records("p", ["a0003", "a0050", "a0050", "nope"])
        assert (result.deleted, result.not_found, result.version) == (2, 1, 2)  # repeats count once
        info = store.get_pool("p")
        assert (info.count, info.deleted, info.live) == (100, 2, 98)
        grown = store.load_vectors("p", base=base)
        _same(grown, store.load_vectors("p"))
        assert grown.deleted is not None
        assert np.flatnonzero(grown.deleted).tolist() == [3, 50]
        assert grown.row_versions[[3, 50]].tolist() == [2, 2]
        assert np.shares_memory(grown.vectors, base.vectors)  # a delete rewrites no vector
        assert np.array_equal(base.row_versions, versions_before)
        assert base.deleted is None
        revived = store.upsert("p", [_records("a", 4, seed=1)[3]], model="m", dim=DIM)  # same content
        assert (revived.inserted, revived.updated, revived.unchanged) == (1, 0, 0)
        _upsert(store, _records("b", 5, seed=2))
        store.delete_records("p", ["b0001", "a0010"])
        again = store.load_vectors("p", base=grown)
        _same(again, store.load_vectors("p"))
        assert again.deleted is not None
        assert [again.ids[i] for i in np.flatnonzero(again.deleted)] == ["a0010", "a0050", "b0001"]
        assert (store.get_pool("p").live, again.live) == (102, 102)
        assert store.delete_records("p", ["a0050"]).version == again.version  # nothing to delete
        store.delete_pool("p")
        _upsert(store, _records("a", 10, seed=1))
        assert store.load_vectors("p").deleted is None
        assert store.get_pool("p").deleted == 0


def test_a_pool_without_texts_grows_without_sketch_rows_until_a_text_comes(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=_sketch) as store:
        _upsert(store, _records("a", 300, seed=1, texts=False))
        base = store.load_vectors("p")
        assert base.sketches is None  # the pool keeps sketches (a sketch function), stores none
        _upsert(store, _records("b", 40, seed=2, texts=False))
        grown = store.load_vectors("p", base=base)
        assert grown.sketches is None  # no zero array grown either
        assert np.shares_memory(grown.vectors, base.vectors)  # appended in place
        _same(grown, store.load_vectors("p"))
        _upsert(store, [*_records("c", 3, seed=3), *_records("a", 2, seed=4, start=7)])  # texts arrive
        with_texts = store.load_vectors("p", base=grown)
        _same(with_texts, store.load_vectors("p"))
        assert with_texts.sketches is not None
        assert np.flatnonzero(dense_sketches(with_texts).any(axis=1)).tolist() == [7, 8, 340, 341, 342]
        _upsert(store, _records("d", 5, seed=5, texts=False))
        _same(store.load_vectors("p", base=with_texts), store.load_vectors("p"))
        assert (
            store.load_vectors("p", sketches=False, base=store.load_vectors("p", sketches=False)).sketches
            is None
        )
