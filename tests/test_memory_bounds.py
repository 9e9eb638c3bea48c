"""Memory bounded by design (issue 15): float16 rows, byte-bounded snapshots, one load per cold pool,
RESOURCE_EXHAUSTED instead of an OOM kill.

Library tests on a real LMDB store in tmp_path; the service tests on a real server on 127.0.0.1:0.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.client.client import Client
from gotd.client.types import RankedCandidate
from gotd.server.ot.rows import StackedRows
from gotd.server.selection.costs import Cost, pool_features
from gotd.server.selection.kmeans import id_keys
from gotd.server.selection.modes import Mode, SelectionConfig, score, solve
from gotd.server.service.pools import PoolSnapshots, snapshot_bytes
from gotd.server.service.servicer import SELECT_BUFFER_EVENTS
from tests.conftest import clustered, vector_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _overlap(a: np.ndarray, b: np.ndarray, frac: float) -> float:
    k = max(1, int(len(a) * frac))
    return len(set(np.argsort(a, kind="stable")[:k]) & set(np.argsort(b, kind="stable")[:k])) / k


@pytest.mark.parametrize("mode", [Mode.EXACT, Mode.GLOBAL])
def test_float16_rows_rank_like_float32(mode: Mode) -> None:
    """Exact equality against float32 copies of the float16 rows; high overlap against the originals."""
    x32 = clustered(6000, seed=3, dim=64)
    y = torch.from_numpy(clustered(50, seed=4, dim=64))
    x16 = x32.astype(np.float16)
    f16 = pool_features(x16, None, Cost.EMBEDDING, 1.0).x
    assert isinstance(f16, StackedRows)
    rounded = torch.from_numpy(x16.astype(np.float32))
    keys = id_keys([f"c{i}" for i in range(len(x32))])
    config = SelectionConfig(mode=mode, eps=0.05, summary_size=1000, block_size=700)
    p16, p_rounded, p32 = (solve(x, y, config, keys=keys) for x in (f16, rounded, torch.from_numpy(x32)))
    assert torch.equal(p16.g, p_rounded.g)
    s16 = score(f16, y, p16, block_size=700).numpy()
    assert np.array_equal(s16, score(rounded, y, p_rounded, block_size=700).numpy())
    s32 = score(torch.from_numpy(x32), y, p32, block_size=700).numpy()
    assert _overlap(s16, s32, 0.05) >= 0.99
    assert np.corrcoef(s16, s32)[0, 1] > 0.9999


def _store_with_pools(path: Path, sizes: dict[str, int], dtype: str = "float32") -> Store:
    store = Store(path, vector_dtype=dtype)
    for seed, (name, n) in enumerate(sizes.items()):
        x = clustered(n, seed=seed, dim=32)
        records = [Record(id=f"{name}{i}", embedding=x[i]) for i in range(n)]
        store.upsert(name, records, model="m", dim=32, vectors=x)
    return store


def test_snapshots_are_bounded_in_bytes_and_keep_the_storage_dtype(tmp_path: Path) -> None:
    with _store_with_pools(tmp_path / "s", {"a": 3000, "b": 3000}, "float16") as store:
        one = snapshot_bytes(store.load_vectors("a", upcast=False))
        assert store.load_vectors("a", upcast=False).vectors.dtype == np.float16
        assert store.load_vectors("a").vectors.dtype == np.float32
        fits_one = PoolSnapshots(store, int(one * 1.5))
        for pool in ("a", "b", "a"):
            assert fits_one.get(pool).vectors.dtype == np.float16
        assert fits_one.loads == 3, "b evicted a"
        assert fits_one.size_bytes <= int(one * 1.5)
        fits_two = PoolSnapshots(store, 3 * one)
        for pool in ("a", "b", "a", "b"):
            fits_two.get(pool)
        assert fits_two.loads == 2
        x = clustered(500, seed=9, dim=32)
        added = [Record(id=f"new{i}", embedding=x[i]) for i in range(500)]
        store.upsert("a", added, model="m", dim=32, vectors=x)
        grown = fits_two.get("a")
        assert len(grown.ids) == 3500
        held = snapshot_bytes(grown) + snapshot_bytes(fits_two.get("b"))
        assert fits_two.size_bytes == held, "the older version of a was dropped"
        nothing = PoolSnapshots(store, 0)
        nothing.get("a")
        nothing.get("a")
        assert nothing.loads == 2
        assert nothing.size_bytes == 0


def test_concurrent_cold_requests_share_one_load(tmp_path: Path) -> None:
    with _store_with_pools(tmp_path / "s", {"a": 2000}) as store:
        release = threading.Event()
        real = store.load_vectors

        def slow_load(pool: str, **kwargs: Any) -> Any:
            release.wait()
            return real(pool, **kwargs)

        store.load_vectors = slow_load  # type: ignore[method-assign]
        snapshots = PoolSnapshots(store, 1 << 30)
        got: list[Any] = []
        threads = [threading.Thread(target=lambda: got.append(snapshots.get("a"))) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(100_000):  # bounded: until the three others wait on the first one's load
            if snapshots.waiting == 3:
                break
            threading.Event().wait(0.001)
        assert snapshots.waiting == 3
        release.set()
        for t in threads:
            t.join()
        assert snapshots.loads == 1
        assert len(got) == 4
        assert all(a is got[0] for a in got)


def test_a_select_that_would_not_fit_is_resource_exhausted(make_server: Any) -> None:
    server = make_server(memory_limit_bytes=400_000)
    with Client(server.address, timeout=120) as client:
        client.ingest("p", vector_records(clustered(3000, seed=1)))
        targets = clustered(10, seed=2)
        with pytest.raises(grpc.RpcError) as cold:  # the 3000 x 384 float32 snapshot alone is ~5 MB
            client.select("p", targets, k=5)
        assert cold.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "GiB are available" in str(cold.value.details())
        client.score("p", targets, ["c00000"])  # loads the pool (Score returns a few values)
        ranked, _ = client.select("p", targets, k=5)  # in memory: ~0.14 MB of working memory
        assert len(ranked) == 5
        with pytest.raises(grpc.RpcError) as big:  # every row returned: ~0.6 MB
            client.select("p", targets, k=3000)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "k=3000" in str(big.value.details())


def test_a_float16_server_ranks_like_a_float32_one(make_server: Any) -> None:
    records = vector_records(clustered(2500, seed=5))
    targets = clustered(20, seed=6)
    results = []
    for dtype in ("float32", "float16"):
        with Client(make_server(vector_dtype=dtype).address, timeout=120) as client:
            client.ingest("p", records)
            results.append(client.select("p", targets, k=2500, mode="global"))
    (r32, s32), (r16, s16) = results
    assert s16.converged
    assert s32.converged
    top = 125
    assert len({r.id for r in r16[:top]} & {r.id for r in r32[:top]}) / top >= 0.95
    scores32 = {r.id: r.score for r in r32}
    assert np.corrcoef([r.score for r in r16], [scores32[r.id] for r in r16])[0, 1] > 0.999


def test_a_slow_client_slows_the_producer_instead_of_growing_a_queue(make_server: Any) -> None:
    """20 MB of ranked metadata, far more than HTTP/2 buffers: the server's unsent events stay bounded."""
    server = make_server()
    gauge = server.running.engine.metrics.select_buffered
    records = vector_records(clustered(20_000, seed=7))
    for r in records:
        r["meta"] = {"pad": "x" * 1000}
    with Client(server.address, timeout=300) as client:
        client.ingest("p", records, batch_size=2000)
        targets = clustered(10, seed=8)
        stream = client.select_stream("p", targets, k=20_000, batch_size=50, include_metadata=True)
        first = next(stream)  # the call runs; the client now reads nothing
        seen = []
        for _ in range(100_000):  # bounded: until the producer has filled its buffer and waits
            seen.append(gauge._value.get())
            if seen[-1] >= SELECT_BUFFER_EVENTS:
                break
            threading.Event().wait(0.002)
        for _ in range(200):  # the producer stays blocked: the buffer does not grow past its bound
            seen.append(gauge._value.get())
            threading.Event().wait(0.002)
        assert max(seen) == SELECT_BUFFER_EVENTS
        events = [first, *stream]
    ranked = [e for e in events if isinstance(e, RankedCandidate)]
    assert [r.rank for r in ranked] == list(range(1, 20_001))
    assert gauge._value.get() == 0
