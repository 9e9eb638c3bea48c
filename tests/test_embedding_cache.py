"""The text -> embedding cache is bounded, keeps what is used, and forgets deleted pools (issue 18)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.store.core import Store
from gotd.cache.store.embeddings import EmbeddingCache, cache_key
from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc

DIM = 384


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_bounded_with_recently_used_entries_kept(tmp_path: object) -> None:
    with Store(tmp_path) as store:  # type: ignore[arg-type]
        cache = EmbeddingCache(store, max_entries=100)
        hot = "a text looked up all the time"
        cache.put_many("m", [hot], _vectors(1, 0))
        sizes = []
        for batch in range(40):
            texts = [f"text {batch}-{i}" for i in range(10)]
            cache.put_many("m", texts, _vectors(10, batch + 1))
            assert 0 in cache.get_many("m", [hot]), f"the hot entry was evicted after batch {batch}"
            sizes.append(len(cache))
        stats = cache.stats()
        assert max(sizes) <= 100
        assert stats.entries == sizes[-1]
        assert stats.evicted >= 1 + 400 - stats.entries  # (the hot entry's older copies count too)
        recent = cache.get_many("m", [f"text 39-{i}" for i in range(10)])
        assert sorted(recent) == list(range(10))
        assert cache.get_many("m", ["text 0-0"]) == {}


def test_disk_stops_growing_once_full(tmp_path: object) -> None:
    """LMDB reuses the pages of evicted entries: the file's high-water mark stays flat."""
    with Store(tmp_path) as store:  # type: ignore[arg-type]
        cache = EmbeddingCache(store, max_entries=2000)

        def used_pages() -> int:
            return int(store.env.env.info()["last_pgno"])

        marks = []
        for round_ in range(12):
            texts = [f"r{round_} t{i}" for i in range(1000)]
            cache.put_many("m", texts, _vectors(1000, round_))
            marks.append(used_pages())
        assert len(cache) <= 2000
        # after the cache filled (round 3), 8 more rounds of inserts add at most 10% to the file
        assert marks[-1] <= 1.1 * marks[3], marks


def test_entries_of_an_older_gotd_are_evicted(tmp_path: object) -> None:
    with Store(tmp_path) as store:  # type: ignore[arg-type]
        legacy = cache_key("m", "old text")
        assert len(legacy) == 24
        store.env.write(lambda txn: txn.put(legacy, _vectors(1, 0).tobytes(), db=store.env.dbs["embcache"]))
        cache = EmbeddingCache(store, max_entries=10)
        for batch in range(4):
            cache.put_many("m", [f"t{batch}-{i}" for i in range(5)], _vectors(5, batch))
        assert store.env.read(lambda txn: txn.get(legacy, db=store.env.dbs["embcache"])) is None
        assert len(cache) <= 10


def _cache_info(address: str, pool: str) -> pb.EmbeddingCacheInfo:
    import grpc

    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.SelectionServiceStub(channel).GetPool(pb.GetPoolRequest(name=pool), timeout=60)
    return reply.embedding_cache


@pytest.mark.usefixtures("one_torch_thread")
def test_delete_pool_drops_its_texts_and_get_pool_reports_the_size(make_server: object) -> None:
    srv: BackgroundServer = make_server(embedding_cache_entries=1000)  # type: ignore[operator]
    texts = [f"sentence number {i} about rivers and mountains" for i in range(12)]
    with Client(srv.address, timeout=120) as client:
        client.ingest("keep", [{"id": f"k{i}", "text": t} for i, t in enumerate(texts[:4])])
        client.ingest("gone", [{"id": f"g{i}", "text": t} for i, t in enumerate(texts[4:])])
        info = _cache_info(srv.address, "keep")
        assert (info.entries, info.max_entries, info.evicted) == (12, 1000, 0)
        client.delete_pool("gone")
        assert _cache_info(srv.address, "keep").entries == 4


def _compact(source: Path, output: Path) -> subprocess.CompletedProcess[str]:
    command = ["compact", "--data-dir", str(source), "--output", str(output)]
    return subprocess.run(
        [sys.executable, "-m", "gotd.client.cli", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_compact_copy_drops_the_free_pages(tmp_path: Path) -> None:
    """After evictions the file keeps its high-water size; `gotd compact` writes a smaller copy."""
    source, copy = tmp_path / "data", tmp_path / "compacted"
    with Store(source) as store:
        cache = EmbeddingCache(store, max_entries=2000)
        for round_ in range(6):
            cache.put_many("m", [f"r{round_} t{i}" for i in range(1000)], _vectors(1000, round_))
        kept = cache.stats()
        probe = cache.get_many("m", ["r5 t7"])[0]
    done = _compact(source, copy)
    assert done.returncode == 0, done.stderr
    before = (source / "lmdb" / "data.mdb").stat().st_size
    after = (copy / "lmdb" / "data.mdb").stat().st_size
    assert after < 0.8 * before, (before, after)
    with Store(copy) as store:
        cache = EmbeddingCache(store, max_entries=2000)
        assert cache.stats() == kept
        np.testing.assert_array_equal(cache.get_many("m", ["r5 t7"])[0], probe)
    again = _compact(source, copy)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ")
    assert "already holds a store" in again.stderr
