"""Stores whose sketch chunks are in the first (dense) format: read, upserted into, backfilled and
selected from exactly as the same store written sparse."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.sketch import SKETCH_DB
from gotd.cache.store.sketch_codec import decode_chunk
from gotd.client.client import Client
from gotd.lab.corpora.wiki import load_wiki
from gotd.lab.demo import BackgroundServer
from gotd.server.ingest.embedder import Embedder
from gotd.server.selection.sketches import SKETCH_BUCKETS, tf_rows, tf_sparse
from tests._store_helpers import dense_sketches, unit_vectors

DIM = 16


def _records(ids: range, *, seed: int, texts: bool = True) -> list[Record]:
    x = unit_vectors(len(ids), DIM, seed=seed)
    return [
        Record(id=f"r{i}", text=f"record {i} on topic {i % 7} seed {seed}" if texts else None, embedding=x[k])
        for k, i in enumerate(ids)
    ]


def _chunks(path: Path) -> dict[bytes, bytes]:
    with Store(path) as store, store.env.env.begin() as txn, txn.cursor(db=store.env.dbs[SKETCH_DB]) as cur:
        return {bytes(k): bytes(v) for k, v in cur}


def to_first_format(path: Path) -> int:
    """Rewrite every sketch chunk of the store at ``path`` as gotd wrote it before the sparse encoding
    (float16 rows, row-major); the number of chunks."""
    chunks = _chunks(path)
    with Store(path) as store, store.env.env.begin(write=True) as txn:
        for key, value in chunks.items():
            txn.put(key, decode_chunk(value, SKETCH_BUCKETS).tobytes(), db=store.env.dbs[SKETCH_DB])
    assert all(len(v) % 2 == 0 for v in _chunks(path).values())
    return len(chunks)


def _texts(store: Store, pool: str) -> list[str | None]:
    n = store.get_pool(pool).count
    return [text for _, _, text in store.metadata(pool, np.arange(n))]


def test_a_first_format_store_reads_upserts_and_grows_like_a_sparse_one(tmp_path: Path) -> None:
    sparse, first = tmp_path / "sparse", tmp_path / "first"
    with Store(sparse, sketcher=tf_sparse) as store:
        store.upsert("p", _records(range(700), seed=0), model="m", dim=DIM)
    shutil.copytree(sparse, first)
    assert to_first_format(first) == 3
    with Store(sparse, sketcher=tf_sparse) as a, Store(first, sketcher=tf_sparse) as b:
        base_a, base_b = a.load_vectors("p"), b.load_vectors("p")
        assert base_b.sketches is not None
        np.testing.assert_array_equal(
            dense_sketches(base_b).view(np.uint16), dense_sketches(base_a).view(np.uint16)
        )  # type: ignore[union-attr]
        np.testing.assert_array_equal(dense_sketches(base_b), tf_rows(_texts(b, "p")))
        changed = _records(range(10, 12), seed=1) + _records(range(300, 301), seed=2)
        cleared = _records(range(500, 503), seed=3, texts=False)
        grown = _records(range(700, 800), seed=4)
        for store in (a, b):
            store.upsert("p", changed + cleared + grown, model="m", dim=DIM)
            store.delete_records("p", ["r5", "r600"])
        for store, base in ((a, base_a), (b, base_b)):
            expected = tf_rows(_texts(store, "p"))
            assert not expected[500:503].any()
            for arrays in (store.load_vectors("p"), store.load_vectors("p", base=base)):
                assert arrays.sketches is not None
                np.testing.assert_array_equal(
                    dense_sketches(arrays).view(np.uint16), expected.view(np.uint16)
                )
    after_a, after_b = _chunks(sparse), _chunks(first)
    assert after_a == after_b  # every chunk rewritten, so now in the same (sparse) encoding
    assert len(after_b) == 4
    assert all(len(v) % 2 == 1 for v in after_b.values())


def test_a_chunk_no_upsert_touches_stays_in_the_first_format(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=tf_sparse) as store:
        store.upsert("p", _records(range(600), seed=0), model="m", dim=DIM)
    to_first_format(tmp_path)
    with Store(tmp_path, sketcher=tf_sparse) as store:
        store.upsert("p", _records(range(590, 610), seed=5), model="m", dim=DIM)  # chunk 2 only
        got = dense_sketches(store.load_vectors("p"))
        assert got is not None
        np.testing.assert_array_equal(got.view(np.uint16), tf_rows(_texts(store, "p")).view(np.uint16))
    sizes = [len(v) % 2 for v in _chunks(tmp_path).values()]
    assert sizes == [0, 0, 1]


def test_a_backfill_completes_a_first_format_pool(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=tf_sparse) as store:
        store.upsert("p", _records(range(300), seed=0), model="m", dim=DIM)
    with Store(tmp_path) as bare:  # rows written without a sketch function: zero rows
        bare.upsert(
            "p", _records(range(300, 520), seed=1) + _records(range(40, 60), seed=2), model="m", dim=DIM
        )
    to_first_format(tmp_path)
    with Store(tmp_path, sketcher=tf_sparse) as store:
        done = store.backfill_sketches("p", batch_rows=128)
        assert done.rows_sketched == 240
        got = dense_sketches(store.load_vectors("p"))
        assert got is not None
        expected = tf_rows(_texts(store, "p"))
        assert expected.any(axis=1).all()
        np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


def _ranking(server: BackgroundServer, targets: list[str], k: int) -> list[tuple[str, float]]:
    with Client(server.address, timeout=120) as client:
        ranked, summary = client.select("wiki", targets, k=k, cost="fused")
    assert summary.cost == "fused"
    return [(r.id, r.score) for r in ranked]


def test_fused_rankings_of_a_first_format_store_are_the_sparse_ones(
    tmp_path: Path, embedder: Embedder, make_server: Any
) -> None:
    docs = load_wiki()[::53][:70]
    pool: list[dict[str, Any]] = [{"id": d.id, "text": d.text[:500]} for d in docs[6:]]
    targets = [d.text[:500] for d in docs[:6]]
    sparse, first = tmp_path / "sparse", tmp_path / "first"
    server = BackgroundServer(embedder=embedder, listen="127.0.0.1:0", data_dir=sparse)
    with server, Client(server.address, timeout=120) as client:
        client.ingest("wiki", pool)
    shutil.copytree(sparse, first)
    assert to_first_format(first) == 1
    a = _ranking(make_server(data_dir=sparse), targets, len(pool))
    b = _ranking(make_server(data_dir=first), targets, len(pool))
    assert len(a) == len(pool)
    assert b == a  # the whole ranking, ids and scores
