"""Validation epochs of cost ``auto`` over gRPC: a grown pool reuses the validation of an earlier version
while the rows written since stay within the staleness bound, and with it the potential epoch.

A real server on 127.0.0.1 port 0, real LMDB in tmp_path, real Redis (shared, or a private one that is
stopped), the real default model on a small slice of the wiki corpus.
"""

from __future__ import annotations

from typing import Any

import pytest

from gotd.client.client import Client
from gotd.client.types import CostValidation, SelectSummary
from gotd.lab.corpora.wiki import load_wiki
from tests.conftest import BackgroundServer

TOPIC = "Mathematics"
K = 12
MIN_TARGETS = 30


@pytest.fixture(scope="module")
def corpus() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """200 pool records (20 of the topic), 12 more to grow it by, and 36 texts of the topic as targets."""
    docs = load_wiki()
    maths = [d for d in docs if d.topic == TOPIC][:62]
    others = [d for d in docs if d.topic != TOPIC][::45][:186]
    pool = [{"id": d.id, "text": d.text[:300]} for d in maths[36:56] + others[:180]]
    growth = [{"id": d.id, "text": d.text[:300]} for d in maths[56:] + others[180:]]
    return pool, growth, [d.text[:300] for d in maths[:36]]


def _validation(summary: SelectSummary) -> CostValidation:
    assert summary.validation is not None
    assert summary.validation.status == "validated"
    return summary.validation


def _outcomes(srv: BackgroundServer) -> dict[str, float]:
    counter = srv.running.metrics.cost_validations
    return {o: counter.labels(o)._value.get() for o in ("validated", "cached", "epoch")}


def test_a_grown_pool_reuses_the_validation_and_the_potential_epoch(
    make_server: Any,
    corpus: tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]],
    redis_url: str,
    redis_prefix: str,
) -> None:
    pool, growth, targets = corpus
    srv: BackgroundServer = make_server(
        redis_url=redis_url, redis_prefix=redis_prefix, validation_min_targets=MIN_TARGETS
    )
    with Client(srv.address, timeout=120) as client:
        client.ingest("wiki", pool)
        _, cold = client.select("wiki", targets, k=K)
        client.ingest("wiki", growth[:4])  # 4 of 204 rows (2%): within the fused default bound 0.05
        grown_ranked, grown = client.select("wiki", targets, k=K)
        _, other_k = client.select("wiki", targets, k=2 * K)  # another share of the pool measured
        fresh_ranked, fresh = client.select("wiki", targets, k=K, max_staleness=0.0)
        client.ingest("wiki", growth[4:])  # 8 of 212 rows (3.8%) since the fresh validation
        _, later = client.select("wiki", targets, k=K)
        _, strict = client.select("wiki", targets, k=K, max_staleness=0.02)
    first, reused = _validation(cold), _validation(grown)
    assert not first.cache_hit
    assert "validated at pool version" not in first.detail
    assert reused.cache_hit
    assert f"validated at pool version {cold.pool_version}" in reused.detail
    assert "1.96% of the rows written since" in reused.detail
    assert (reused.embedding_weight, reused.relative_eps, reused.settings, reused.fraction) == (
        first.embedding_weight,
        first.relative_eps,
        first.settings,
        first.fraction,
    )
    # the potential of the chosen setting serves as an epoch too: no solve, the growth scored only
    assert not grown.solved
    assert grown.epoch_version == cold.pool_version
    assert grown.rows_scored == len(growth[:4])
    assert not _validation(other_k).cache_hit
    assert _validation(other_k).fraction == float(f"{2 * K / 204:.2g}")  # the measured share, rounded
    # max_staleness 0: validated again at this version (and solved)
    again = _validation(fresh)
    assert not again.cache_hit
    assert "validated at pool version" not in again.detail
    assert fresh.solved
    assert f"validated at pool version {fresh.pool_version} (3.77% of" in _validation(later).detail
    assert not _validation(strict).cache_hit, "3.77% written since, past the request's 0.02"
    assert _outcomes(srv) == {"validated": 4.0, "cached": 0.0, "epoch": 2.0}
    if (again.embedding_weight, again.relative_eps) == (first.embedding_weight, first.relative_eps):
        assert [c.id for c in fresh_ranked][:3] == [c.id for c in grown_ranked][:3]


def test_the_validation_epoch_serves_on_while_redis_is_down(
    make_server: Any, corpus: tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]
) -> None:
    from tests.redis_fixtures import RedisServer

    pool, growth, targets = corpus
    with RedisServer() as private:
        srv: BackgroundServer = make_server(
            redis_url=private.url, redis_timeout_seconds=0.2, validation_min_targets=MIN_TARGETS
        )
        with Client(srv.address, timeout=120) as client:
            client.ingest("wiki", pool)
            _, cold = client.select("wiki", targets, k=K)
            _, cached = client.select("wiki", targets, k=K)
            private.stop()
            client.ingest("wiki", growth[:4])
            _, down = client.select("wiki", targets, k=K)
            _, down_again = client.select("wiki", targets, k=K)
    first = _validation(cold)
    assert _validation(cached).cache_hit
    for summary in (down, down_again):
        v = _validation(summary)
        assert v.cache_hit
        assert f"validated at pool version {cold.pool_version}" in v.detail
        assert (v.embedding_weight, v.relative_eps, v.settings) == (
            first.embedding_weight,
            first.relative_eps,
            first.settings,
        )
    assert _outcomes(srv) == {"validated": 1.0, "cached": 1.0, "epoch": 2.0}
