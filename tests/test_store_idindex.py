"""The id index: a batch's writes do not grow with the pool (ordered keys), older hashed pools and long
ids keep working.

Pages written by a commit are counted, not timed: with a read transaction held open since before the
pool existed, LMDB can reuse no page freed after it, so every page a commit writes is a new page at
the end of the file and ``last_pgno`` grows by exactly the pages it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gotd.cache.errors import NotFound
from gotd.cache.records import Record
from gotd.cache.store import upsert as upsert_module
from gotd.cache.store.core import Store
from gotd.cache.store.idindex import HASHED, ORDERED, ORDERED_MAX_BYTES
from tests._store_helpers import unit_vectors

DIM = 128  # 512-byte rows: 1024 rows per chunk, so a 1024-row batch writes one whole chunk
BATCH = 1024


def _pages_per_batch(store: Store, at: tuple[int, ...]) -> list[int]:
    """Pages written by the commit of the batch that follows the first ``n`` batches, for ``n`` in ``at``."""
    env = store.env.env
    pages = []
    with env.begin():  # pins every page freed from now on: no reuse
        for b in range(max(at) + 1):
            x = unit_vectors(BATCH, DIM, seed=b)
            batch = [Record(id=f"id-{b * BATCH + i:09d}", embedding=v) for i, v in enumerate(x)]
            before = env.info()["last_pgno"]
            store.upsert("pool", batch, model="m", dim=DIM)
            if b in at:
                pages.append(env.info()["last_pgno"] - before)
    return pages


def test_pages_written_per_batch_do_not_grow_with_the_pool(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        small, large = _pages_per_batch(store, (8, 40))  # into 8k rows, into 40k rows
        assert (
            store.env.read(lambda txn: upsert_module.read_pool(txn, store.env.dbs, "pool")).id_index
            == ORDERED
        )
    # measured 170 and 174: the batch's ~170 pages, and a few more for the deeper branches and the
    # free-page lists of the pinned pages (hashed keys: 342 and 766, the test below)
    assert large <= small + 8


def test_hashed_keys_grow_with_the_pool_which_the_measure_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old scheme, for contrast: the same measure catches writes that grow with the pool."""
    monkeypatch.setattr(upsert_module, "ORDERED", HASHED)
    with Store(tmp_path) as store:
        small, large = _pages_per_batch(store, (8, 40))
    assert large > small + 200


@pytest.mark.parametrize("scheme", [HASHED, ORDERED])
def test_lookups_updates_and_deletes_in_either_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: int
) -> None:
    monkeypatch.setattr(upsert_module, "ORDERED", scheme)
    long_ids = [("é" * 200) + f"{i}" for i in range(3)]  # 400+ bytes: hashed in either scheme
    ids = ["b", "a", *long_ids, "x" * ORDERED_MAX_BYTES]
    x = unit_vectors(len(ids), 16, seed=3)
    records = [Record(id=i, embedding=v, text=f"t {i}") for i, v in zip(ids, x, strict=True)]
    with Store(tmp_path) as store:
        assert store.upsert("pool", records, model="m", dim=16).inserted == len(ids)
        raw = store.env.read(lambda txn: bytes(txn.get(b"pool", db=store.env.dbs["pools"])))
        assert json.loads(raw).get("id_index", HASHED) == scheme  # a hashed pool's record has no field
        assert store.rows_for_ids("pool", [long_ids[2], "a", ids[-1]]).tolist() == [4, 1, 5]
        again = store.upsert("pool", [Record(id="b", embedding=x[1]), records[3]], model="m", dim=16)
        assert (again.inserted, again.updated, again.unchanged) == (0, 1, 1)
        found = store.get_records("pool", [long_ids[1], "b", "nope"])
        assert sorted(found) == ["b", long_ids[1]]
        assert found[long_ids[1]].row == 3
        assert store.delete_records("pool", [long_ids[0], "a", "nope"]).deleted == 2
        with pytest.raises(NotFound, match="nope"):
            store.rows_for_ids("pool", ["b", "nope"])
        revived = store.upsert("pool", records[1:3], model="m", dim=16)
        assert (revived.inserted, revived.updated, store.get_pool("pool").count) == (2, 0, len(ids))
