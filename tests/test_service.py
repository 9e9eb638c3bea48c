"""End to end over a real server on 127.0.0.1:0 with real Redis: ingest → select → ranked stream."""

from __future__ import annotations

import numpy as np
import redis
import torch

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectProgress, SelectSummary
from gotd.lab.demo import BackgroundServer
from gotd.server.selection.modes import Mode, SelectionConfig, score, solve, top_k
from tests.conftest import clustered, vector_records


def _ingest_pool(client: Client, n: int = 600, seed: int = 1) -> np.ndarray:
    x = clustered(n, seed=seed)
    result = client.ingest("pool", vector_records(x), batch_size=200)
    assert result.inserted == n
    assert result.info.count == n
    return x


def _targets(seed: int = 2, m: int = 30) -> list[list[float]]:
    return clustered(m, seed=seed, centers=2).tolist()


def test_select_streams_k_ranked_ids_then_summary(client: Client) -> None:
    _ingest_pool(client)
    events = list(client.select_stream("pool", _targets(), k=50, batch_size=16))
    assert isinstance(events[-1], SelectSummary)
    assert any(isinstance(e, SelectProgress) for e in events)
    ranked = [e for e in events if isinstance(e, RankedCandidate)]
    assert [c.rank for c in ranked] == list(range(1, 51))
    assert len({c.id for c in ranked}) == 50
    scores = [c.score for c in ranked]
    assert scores == sorted(scores)
    summary = events[-1]
    assert summary.returned == 50
    assert summary.pool_size == 600
    assert summary.mode == "exact"
    assert summary.converged
    assert not summary.cache_hit


def test_ranking_equals_the_engine_and_is_deterministic(client: Client) -> None:
    x = _ingest_pool(client)
    y = np.asarray(_targets(), dtype=np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    ranked, summary = client.select("pool", y.tolist(), k=40, eps=0.1)
    config = SelectionConfig(mode=Mode.EXACT, eps=0.1, tol=1e-4)
    potential = solve(torch.from_numpy(x), torch.from_numpy(y), config)
    expected = top_k(score(torch.from_numpy(x), torch.from_numpy(y), potential.g, eps=0.1).numpy(), 40)
    assert [c.id for c in ranked] == [f"c{row:05d}" for row, _ in expected]
    again, _ = client.select("pool", y.tolist(), k=40, eps=0.1)
    assert [c.id for c in again] == [c.id for c in ranked]
    assert summary.k_exceeds_pool is False


def test_repeat_select_is_a_cache_hit_in_redis(client: Client, redis_url: str, redis_prefix: str) -> None:
    _ingest_pool(client)
    first, s1 = client.select("pool", _targets(), k=20)
    r = redis.Redis.from_url(redis_url)
    try:
        keys = list(r.scan_iter(match=f"{redis_prefix}*"))
    finally:
        r.close()
    assert keys, "the potential was not written to Redis"
    second, s2 = client.select("pool", _targets(), k=20)
    assert not s1.cache_hit
    assert s2.cache_hit
    assert s2.iterations == 0
    assert [c.id for c in second] == [c.id for c in first]
    assert [c.score for c in second] == [c.score for c in first]


def test_grown_pool_warm_starts_and_new_ids_are_scored(client: Client) -> None:
    _ingest_pool(client, n=500)
    first, _ = client.select("pool", _targets(), k=10)
    extra = clustered(25, seed=9)
    client.ingest("pool", vector_records(extra, prefix="new"))
    ranked, summary = client.select("pool", _targets(), k=525, max_staleness=0.0)
    assert summary.warm_started
    assert summary.solved
    assert summary.epoch_version == summary.pool_version
    assert not summary.cache_hit
    assert summary.pool_size == 525
    assert summary.returned == 525
    scores = client.score("pool", _targets(), ["new00003", first[0].id], max_staleness=0.0)
    by_id = {c.id: c.score for c in ranked}
    assert abs(scores[0].score - by_id["new00003"]) < 1e-4
    assert abs(scores[1].score - by_id[first[0].id]) < 1e-4


def test_k_above_pool_returns_everything_and_says_so(client: Client) -> None:
    _ingest_pool(client, n=100)
    ranked, summary = client.select("pool", _targets(), k=1000, exclude_ids=["c00001", "c00002"])
    assert len(ranked) == 98
    assert summary.k_exceeds_pool
    assert {"c00001", "c00002"}.isdisjoint(c.id for c in ranked)


def test_domain_filter_and_paper_mode(client: Client) -> None:
    x = clustered(400, seed=3, centers=4)
    domains = [f"d{i % 4}" for i in range(400)]
    client.ingest("pool", vector_records(x, domains=domains))
    ranked, _ = client.select("pool", _targets(), k=400, domains=["d1"], include_metadata=True)
    assert len(ranked) == 100
    assert {c.domain for c in ranked} == {"d1"}
    paper, summary = client.select("pool", _targets(), k=400, mode="paper")
    assert summary.mode == "paper"
    assert 0 < len(paper) < 400


def test_text_targets_and_named_target_sets(client: Client) -> None:
    texts = ["The derivative of a function", "Prime numbers and factorisation", "A recipe for bread"]
    client.ingest("texts", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])
    info = client.put_target_set("maths", ["Calculus and limits", "Number theory"])
    assert info.count == 2
    assert info.dim == 384
    got, ids = client.get_target_set("maths")
    assert got.content_hash == info.content_hash
    assert ids == ["t0", "t1"]
    ranked, summary = client.select("texts", "maths", k=3)
    assert ranked[-1].id == "t2", "the bread recipe should rank last for a maths target"
    assert summary.target_count == 2


def test_pools_listing_and_deletion(client: Client) -> None:
    _ingest_pool(client, n=50)
    (info,) = client.pools()
    assert (info.name, info.count, info.dim) == ("pool", 50, 384)
    again = client.ingest("pool", vector_records(clustered(50, seed=1)))
    assert again.unchanged == 50
    assert again.info.version == info.version
    client.delete_pool("pool")
    assert client.pools() == []


def test_cache_fallback_gives_the_same_ranking(make_server: object) -> None:
    from tests.redis_fixtures import RedisServer

    with RedisServer() as private:
        srv: BackgroundServer = make_server(redis_url=private.url, redis_timeout_seconds=0.2)  # type: ignore[operator]
        with Client(srv.address, timeout=60) as client:
            _ingest_pool(client, n=300)
            healthy, _ = client.select("pool", _targets(), k=30)
            r = redis.Redis.from_url(private.url)
            for key in r.scan_iter(match="gotd:*"):
                r.set(key, b"garbage")
            r.close()
            poisoned, s_poisoned = client.select("pool", _targets(), k=30)
            assert not s_poisoned.cache_hit
            private.stop()
            down, _s_down = client.select("pool", _targets(), k=30)
            assert [c.id for c in poisoned] == [c.id for c in healthy] == [c.id for c in down]
            assert [c.score for c in down] == [c.score for c in healthy]
            assert srv.running.duals.healthy is False


def test_score_after_growth_is_the_select_of_the_same_epoch(client: Client) -> None:
    _ingest_pool(client, n=400)
    client.select("pool", _targets(), k=400)
    client.ingest("pool", vector_records(clustered(10, seed=11), prefix="late"))
    ids = ["late00004", "c00001", "c00399"]
    scored = client.score("pool", _targets(), ids)  # first at this version: Score opens nothing new
    after, summary = client.select("pool", _targets(), k=410)
    assert not summary.solved
    assert summary.epoch_version < summary.pool_version
    by_id = {c.id: c.score for c in after}
    # One rule: the calibrated gradient over the pool as it is now, under the epoch's potential.
    assert [s.score for s in scored] == [by_id[i] for i in ids]
    assert client.pool("pool").count == 410


def test_score_is_a_cache_hit_after_growth(server: BackgroundServer, client: Client) -> None:
    _ingest_pool(client, n=300)
    client.select("pool", _targets(), k=5)
    client.ingest("pool", vector_records(clustered(5, seed=12), prefix="late"))
    iterations_before = server.running.metrics.solve_iterations._sum.get()
    client.score("pool", _targets(), ["late00001"])
    assert server.running.metrics.solve_iterations._sum.get() == iterations_before, "Score re-solved"
