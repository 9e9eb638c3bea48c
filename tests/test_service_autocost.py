"""Cost ``auto`` validated per request over gRPC: deterministic, cached, bypassed, falls back, one choice.

A real server on 127.0.0.1 port 0, real LMDB in tmp_path, real Redis (shared, or a private one that
is poisoned and stopped), the real default model on a small slice of the wiki corpus.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from gotd.client.client import Client
from gotd.client.types import CostValidation, SelectSummary
from gotd.lab.corpora.wiki import load_wiki
from gotd.server.selection.validation import (
    DEFAULT_GRID,
    FALLBACK,
    FIXED_GRID,
    Setting,
    SettingScore,
    Validation,
)
from gotd.server.service import autocost
from gotd.server.service.autocost import _detail
from tests.conftest import BackgroundServer

TOPIC = "Mathematics"
K = 12
MIN_TARGETS = 30
LEARNED = Setting(0.5, 0.05, 0.25)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[dict[str, Any]], list[str]]:
    """120 pool records (20 of the topic) and 36 other texts of the topic as the target set."""
    docs = load_wiki()
    maths = [d for d in docs if d.topic == TOPIC][:56]
    others = [d for d in docs if d.topic != TOPIC][::83][:100]
    pool = [{"id": d.id, "text": d.text[:300]} for d in maths[36:] + others]
    return pool, [d.text[:300] for d in maths[:36]]


@pytest.fixture
def server(make_server: Any, redis_url: str, redis_prefix: str) -> BackgroundServer:
    """The shared Redis as dual cache; validating from 30 targets (the corpus slice has 36)."""
    return make_server(  # type: ignore[no-any-return]
        redis_url=redis_url, redis_prefix=redis_prefix, validation_min_targets=MIN_TARGETS
    )


def _validation(summary: SelectSummary) -> CostValidation:
    assert summary.validation is not None
    return summary.validation


def _setting(v: CostValidation) -> tuple[float, float | None, float]:
    """The chosen setting: weight, relative epsilon and learned metric strength."""
    return v.embedding_weight, v.relative_eps, v.metric_strength


def _best(v: CostValidation) -> tuple[float, float | None, float]:
    """The setting with the best recall, ties to the higher MRR, then to the earlier one."""
    best = max(range(len(v.settings)), key=lambda i: (v.settings[i].recall, v.settings[i].mrr, -i))
    s = v.settings[best]
    return s.embedding_weight, s.relative_eps, s.metric_strength


def test_auto_validates_on_the_target_set_and_reuses_the_cache(
    client: Client, corpus: tuple[list[dict[str, Any]], list[str]], redis_url: str, redis_prefix: str
) -> None:
    pool, targets = corpus
    client.ingest("wiki", pool)
    ranked, summary = client.select("wiki", targets, k=K)
    v = _validation(summary)
    assert v.status == "validated"
    assert not v.cache_hit
    # the default grid: the fixed settings and the learned ones (server setting validation_learned_metric)
    assert [(s.embedding_weight, s.relative_eps, s.metric_strength) for s in v.settings] == [
        (s.embedding_weight, s.relative_eps, s.metric_strength) for s in DEFAULT_GRID
    ]
    assert any(s.metric_strength > 0 for s in v.settings)
    fallback = (FALLBACK.embedding_weight, FALLBACK.relative_eps, FALLBACK.metric_strength)
    if v.detail.startswith("default kept"):  # the best did not clear one standard error of its gain
        assert _setting(v) == fallback
        assert _best(v) != fallback
    else:
        assert _setting(v) == _best(v)
    assert v.fraction == pytest.approx(K / len(pool), rel=0.05)
    assert (v.held_out, v.pool_sample) == (36, len(pool))
    assert summary.embedding_weight == pytest.approx(v.embedding_weight)
    assert summary.cost == ("embedding" if v.embedding_weight == 1.0 else "fused")
    assert summary.validate_ms > 0
    again, second = client.select("wiki", targets, k=K)
    assert second.validation is not None
    assert second.validation.cache_hit
    assert second.cache_hit, "the potential of the chosen setting is cached too"
    assert second.validation.settings == v.settings
    assert second.validation.detail == v.detail, "whether the default was kept is cached with the result"
    assert _setting(second.validation) == _setting(v)
    assert [(r.id, r.score) for r in again] == [(r.id, r.score) for r in ranked]
    r = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in r.scan_iter(match=f"{redis_prefix}pot:*kind=cost_validation*")]
    finally:
        r.close()
    assert len(keys) == 1


@pytest.mark.parametrize(
    ("options", "detail"),
    [
        ({"cost": "fused"}, "cost 'fused'"),
        ({"cost": "embedding"}, "cost 'embedding'"),
        ({"embedding_weight": 0.3}, "embedding_weight"),
        ({"eps": 0.1}, "epsilon"),
        ({"relative_eps": 0.05}, "relative_epsilon"),
    ],
)
def test_explicit_settings_bypass_the_validation(
    client: Client, corpus: tuple[list[dict[str, Any]], list[str]], options: dict[str, Any], detail: str
) -> None:
    pool, targets = corpus
    client.ingest("wiki", pool)
    _, summary = client.select("wiki", targets, k=K, **options)
    v = _validation(summary)
    assert v.status == "bypassed"
    assert detail in v.detail
    assert v.settings == ()
    assert summary.embedding_weight == pytest.approx(options.get("embedding_weight", v.embedding_weight))
    expected_w = 1.0 if options.get("cost") == "embedding" else options.get("embedding_weight", 0.5)
    assert summary.embedding_weight == pytest.approx(expected_w)


def test_small_target_set_falls_back_to_the_fixed_default(
    client: Client, corpus: tuple[list[dict[str, Any]], list[str]]
) -> None:
    pool, targets = corpus
    client.ingest("wiki", pool)
    _, summary = client.select("wiki", targets[:10], k=K)
    v = _validation(summary)
    assert v.status == "fallback"
    assert "10 targets" in v.detail
    # the setting the validation's one-standard-error rule falls back to as well
    assert (v.embedding_weight, v.relative_eps) == (FALLBACK.embedding_weight, FALLBACK.relative_eps)
    assert (summary.cost, summary.embedding_weight) == ("fused", FALLBACK.embedding_weight)
    explicit = client.select(
        "wiki", targets[:10], k=K, cost="fused", embedding_weight=0.5, relative_eps=FALLBACK.relative_eps
    )
    assert summary.eps == pytest.approx(explicit[1].eps)


def test_vector_targets_have_nothing_to_choose(
    client: Client, corpus: tuple[list[dict[str, Any]], list[str]], embedder: Any
) -> None:
    pool, targets = corpus
    client.ingest("wiki", pool)
    vectors = list(embedder.encode(targets))
    _, summary = client.select("wiki", vectors, k=K)
    assert _validation(summary).status == "no_sketches"
    assert summary.cost == "embedding"


def test_same_choice_cold_cached_and_after_a_redis_failure(
    make_server: Any, corpus: tuple[list[dict[str, Any]], list[str]]
) -> None:
    from tests.redis_fixtures import RedisServer

    pool, targets = corpus
    with RedisServer() as private:
        srv: BackgroundServer = make_server(
            redis_url=private.url, redis_timeout_seconds=0.2, validation_min_targets=MIN_TARGETS
        )
        with Client(srv.address, timeout=120) as client:
            client.ingest("wiki", pool)
            cold_ranked, cold = client.select("wiki", targets, k=K)
            cached_ranked, cached = client.select("wiki", targets, k=K)
            r = redis.Redis.from_url(private.url)
            for key in r.scan_iter(match="gotd:*"):
                r.set(key, b"garbage")
            r.close()
            poisoned_ranked, poisoned = client.select("wiki", targets, k=K)
            private.stop()
            down_ranked, down = client.select("wiki", targets, k=K)
    runs = [cold, cached, poisoned, down]
    assert [_validation(s).cache_hit for s in runs[:3]] == [False, True, False]
    assert len({_setting(_validation(s)) for s in runs}) == 1
    assert len({_validation(s).settings for s in runs}) == 1
    rankings = [[(c.id, c.score) for c in ranked] for ranked in (cold_ranked, cached_ranked, poisoned_ranked)]
    assert rankings[0] == rankings[1] == rankings[2] == [(c.id, c.score) for c in down_ranked]


def test_kept_default_detail_names_the_margin() -> None:
    scores = tuple(SettingScore(s, 0.5, 0.5, 0.5) for s in DEFAULT_GRID)
    kept = Validation(FALLBACK, scores, 0.1, 36, 120, kept_default=True)
    assert _detail(kept, 0.1, 1.0) == (
        f"default kept: no setting of {len(DEFAULT_GRID)} beat it by one standard error of held-out recall "
        "at 0.1 of the pool"
    )
    assert "by 2 standard errors of held-out recall" in _detail(kept, 0.1, 2.0)
    best = Validation(DEFAULT_GRID[3], scores, 0.1, 36, 120)
    assert _detail(best, 0.1, 2.0) == (
        f"best of {len(DEFAULT_GRID)} settings by held-out recall at 0.1 of the pool"
    )


def test_learned_metric_chosen_and_reproduced_from_the_cache(
    make_server: Any, corpus: tuple[list[dict[str, Any]], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid of the learned setting alone (so the validation must choose it): the Summary names it, a
    cache hit reproduces the same metric (the potential is a cache hit too: same feature tag), and so does
    the refit after the cache entry is poisoned and after Redis is gone; explicit settings still bypass."""
    from tests.redis_fixtures import RedisServer

    monkeypatch.setattr(autocost, "FIXED_GRID", ())
    monkeypatch.setattr(autocost, "LEARNED_SETTINGS", (LEARNED,))
    pool, targets = corpus
    with RedisServer() as private:
        srv: BackgroundServer = make_server(
            redis_url=private.url,
            redis_timeout_seconds=0.2,
            validation_min_targets=MIN_TARGETS,
            validation_learned_metric=True,
        )
        with Client(srv.address, timeout=120) as client:
            client.ingest("wiki", pool)
            runs = [client.select("wiki", targets, k=K) for _ in range(2)]
            r = redis.Redis.from_url(private.url)
            for key in r.scan_iter(match="gotd:*"):
                r.set(key, b"garbage")
            r.close()
            runs.append(client.select("wiki", targets, k=K))
            private.stop()
            runs.append(client.select("wiki", targets, k=K))
            _, bypassed = client.select("wiki", targets, k=K, embedding_weight=0.5)
    cold = _validation(runs[0][1])
    assert cold.status == "validated"
    assert cold.metric_strength == LEARNED.metric_strength
    assert [s.label for s in cold.settings] == ["w0.5-rel0.05-metric0.25"]
    assert "learned metric of strength 0.25" in cold.describe()
    assert "discriminant direction of strength 0.25 learned from the target set" in cold.detail
    assert [_validation(s).cache_hit for _, s in runs[:3]] == [False, True, False]
    assert runs[1][1].cache_hit, "the potential of the learned metric's features is cached too"
    assert len({(_validation(s).metric_strength, _validation(s).settings) for _, s in runs}) == 1
    rankings = [[(c.id, c.score) for c in ranked] for ranked, _ in runs]
    assert rankings[0] == rankings[1] == rankings[2] == rankings[3]
    explicit = _validation(bypassed)
    assert explicit.status == "bypassed"
    assert explicit.metric_strength == 0.0
    assert bypassed.embedding_weight == 0.5


def test_learned_settings_can_be_turned_off(
    make_server: Any, redis_url: str, redis_prefix: str, corpus: tuple[list[dict[str, Any]], list[str]]
) -> None:
    """Server setting ``validation_learned_metric`` off: the fixed settings of the grid only."""
    pool, targets = corpus
    srv: BackgroundServer = make_server(
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        validation_min_targets=MIN_TARGETS,
        validation_learned_metric=False,
    )
    with Client(srv.address, timeout=120) as client:
        client.ingest("wiki", pool)
        _, summary = client.select("wiki", targets, k=K)
    v = _validation(summary)
    assert v.status == "validated"
    assert [(s.embedding_weight, s.relative_eps) for s in v.settings] == [
        (s.embedding_weight, s.relative_eps) for s in FIXED_GRID
    ]
    assert all(s.metric_strength == 0 for s in v.settings)
    assert v.metric_strength == 0
