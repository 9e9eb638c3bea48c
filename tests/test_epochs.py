"""Potential epochs over a real server, Redis and LMDB: a grown pool is re-ranked by scoring only the
rows written since the epoch, and the answer is the full pass's with the same potential, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import torch

from gotd.cache.duals.codec import PotentialEntry, decode_entry
from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.demo import BackgroundServer
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.topk import top_k
from tests.conftest import clustered, vector_records
from tests.redis_fixtures import RedisServer

N = 600
TARGETS = clustered(30, seed=2, centers=2)


def _y() -> torch.Tensor:
    """The targets as the server resolves inline embeddings (each row divided by its norm)."""
    y = TARGETS.copy()
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return torch.from_numpy(y)


def _grow(client: Client, added: int = 20, updated: int = 5, seed: int = 9) -> None:
    """``added`` new rows and ``updated`` rows of the first ids rewritten, in one batch."""
    batch = vector_records(clustered(added, seed=seed), prefix="new")
    batch += vector_records(clustered(updated, seed=seed + 1), prefix="c")  # ids c00000.. exist
    client.ingest("pool", batch)


def _values_entry(url: str, prefix: str) -> PotentialEntry:
    """The one epoch-values entry (``...:f``) in Redis."""
    with redis.Redis.from_url(url) as r:
        (key,) = [k for k in r.scan_iter(match=f"{prefix}pot:*") if k.endswith(b":f")]
        return decode_entry(bytes(r.get(key)))


def _full_pass(srv: BackgroundServer, g: np.ndarray, eps: float) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The reference: every row of the pool now through the c-transform of ``g``."""
    arrays = srv.running.store.load_vectors("pool")
    y = _y()
    f = c_transform(torch.from_numpy(arrays.vectors), y, torch.from_numpy(g.copy()), eps=eps).numpy()
    return f, arrays.ids, arrays.row_versions


def _ranking(ranked: list[RankedCandidate]) -> list[tuple[str, float]]:
    return [(c.id, c.score) for c in ranked]


def _select(client: Client, **kwargs: Any) -> tuple[list[RankedCandidate], SelectSummary]:
    return client.select("pool", TARGETS.tolist(), k=N + 100, **kwargs)


def test_incremental_values_are_the_c_transform_of_the_changed_rows(
    client: Client, server: BackgroundServer, redis_url: str, redis_prefix: str
) -> None:
    client.ingest("pool", vector_records(clustered(N, seed=1)))
    _, cold = _select(client)
    assert cold.solved
    assert cold.rows_scored == N
    assert cold.epoch_version == cold.pool_version
    before = _values_entry(redis_url, redis_prefix)
    _grow(client)
    ranked, s = _select(client)
    assert not s.solved
    assert s.cache_hit
    assert (s.epoch_version, s.rows_scored, s.pool_size) == (cold.pool_version, 25, N + 20)
    assert s.staleness == pytest.approx(25 / (N + 20))
    entry = _values_entry(redis_url, redis_prefix)
    assert entry.g.tobytes() == before.g.tobytes()
    assert entry.f is not None
    assert before.f is not None
    f_full, ids, row_versions = _full_pass(server, entry.g, s.eps)
    changed = row_versions > np.uint64(cold.pool_version)
    assert int(changed.sum()) == 25
    y = _y()
    x_changed = torch.from_numpy(server.running.store.load_vectors("pool").vectors[changed])
    expected_changed = c_transform(x_changed, y, torch.from_numpy(entry.g.copy()), eps=s.eps).numpy()
    assert np.array_equal(entry.f[changed], expected_changed)
    assert np.array_equal(entry.f[~changed], before.f[~changed[:N]])
    assert np.array_equal(entry.f, f_full)  # merged == a full pass with the same g, bit for bit
    scores = calibrated_gradient(torch.from_numpy(f_full)).numpy()
    expected = [(ids[i], float(v)) for i, v in top_k(scores, N + 100, ids=ids)]
    assert _ranking(ranked) == expected
    scored = client.score("pool", TARGETS.tolist(), ["new00003", "c00001", "c00500"])
    by_id = dict(expected)
    assert [c.score for c in scored] == [by_id["new00003"], by_id["c00001"], by_id["c00500"]]


def test_bound_zero_solves_and_the_new_epoch_serves_after(client: Client) -> None:
    client.ingest("pool", vector_records(clustered(N, seed=1)))
    _select(client)
    _grow(client)
    _, fresh = _select(client, max_staleness=0.0)
    assert fresh.solved
    assert fresh.warm_started
    assert (fresh.epoch_version, fresh.rows_scored, fresh.staleness) == (fresh.pool_version, N + 20, 0.0)
    _again, hit = _select(client)
    assert hit.cache_hit
    assert not hit.solved
    assert hit.rows_scored == 0
    assert hit.epoch_version == fresh.pool_version
    _grow(client, added=200, seed=21)  # 205 / 825 rows: past the default bound of 0.2
    _, past = _select(client)
    assert past.solved
    assert past.epoch_version == past.pool_version
    _grow(client, added=10, seed=31)
    _, within = _select(client, max_staleness=0.5)
    assert not within.solved
    assert within.rows_scored == 15
    assert within.epoch_version == past.pool_version


def test_lost_or_garbage_values_give_the_same_answer(make_server: Any) -> None:
    with RedisServer() as private:
        srv: BackgroundServer = make_server(redis_url=private.url, redis_timeout_seconds=0.2)
        with Client(srv.address, timeout=60) as client:
            client.ingest("pool", vector_records(clustered(N, seed=1)))
            _select(client)
            _grow(client)
            incremental, s = _select(client)
            assert s.rows_scored == 25
            r = redis.Redis.from_url(private.url)
            (key,) = [k for k in r.scan_iter(match="gotd:pot:*") if k.endswith(b":f")]
            answers = {}
            for name, value in {"garbage": b"\x00garbage", "truncated": bytes(r.get(key))[:-9]}.items():
                r.set(key, value)
                srv.running.engine.epoch_values.forget(potentials=False)  # as a replica without them
                ranked, again = _select(client)
                assert again.rows_scored == N + 20, name
                assert not again.solved, name
                answers[name] = _ranking(ranked)
            r.close()
            private.stop()
            srv.running.engine.epoch_values.forget(potentials=False)
            down, s_down = _select(client)  # this process still holds the epoch's potential
            assert s_down.epoch_version == s.epoch_version
            answers["redis down"] = _ranking(down)
            assert all(a == _ranking(incremental) for a in answers.values())


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_bad_max_staleness_is_invalid_argument(client: Client, value: float) -> None:
    client.ingest("pool", vector_records(clustered(50, seed=1)))
    for call in (
        lambda: _select(client, max_staleness=value),
        lambda: client.score("pool", TARGETS.tolist(), ["c00001"], max_staleness=value),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_staleness" in (err.value.details() or "")


def test_two_processes_serve_each_others_epochs(
    tmp_path: Path, make_server: Any, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.reliability.support import ServeProcess

    monkeypatch.setenv("GOTD_REDIS_PREFIX", redis_prefix)
    data = tmp_path / "shared"
    with (
        ServeProcess(data, tmp_path / "serve.log", "--redis-url", redis_url).start() as first,
        Client(first.address, timeout=120) as a,
    ):
        a.ingest("pool", vector_records(clustered(N, seed=1)))
        _, opened = _select(a)
        _grow(a)
        other: BackgroundServer = make_server(data_dir=data, redis_url=redis_url, redis_prefix=redis_prefix)
        with Client(other.address, timeout=120) as b:
            ranked_b, s_b = _select(b)
            ranked_a, s_a = _select(a)
    assert opened.solved
    assert not s_b.solved
    assert s_b.epoch_version == opened.pool_version
    assert s_b.rows_scored == 25
    assert not s_a.solved
    assert s_a.epoch_version == opened.pool_version
    assert _ranking(ranked_a) == _ranking(ranked_b)
