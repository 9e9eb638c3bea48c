"""Potential epochs of the fused cost over a real server, Redis and LMDB: the epoch freezes the IDF
weights of the pool version that opened it, and a grown pool is re-ranked with that IDF and the
epoch's ``g``, bit for bit the full pass's with the same ``g`` and IDF, whatever the cache holds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import torch

from gotd.cache.duals.codec import PotentialEntry, decode_entry, encode_entry
from gotd.cache.sketch_rows import SparseRows
from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.demo import BackgroundServer
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.costs import Cost, SketchFactors, pool_features
from gotd.server.selection.sketches import fused_matrix, tf_rows
from gotd.server.selection.topk import top_k
from tests._store_helpers import dense_sketches
from tests.conftest import clustered
from tests.redis_fixtures import RedisServer

N = 400
W = 0.5
TOPICS = 4
VOCAB = [[f"t{t}w{j}" for j in range(60)] for t in range(TOPICS + 1)]  # the last: words new in the growth


def _texts(n: int, seed: int, topics: list[int]) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(VOCAB[topics[i % len(topics)]], 12)) for i in range(n)]


def _records(n: int, seed: int, prefix: str, topics: list[int]) -> list[dict[str, Any]]:
    x = clustered(n, seed=seed, centers=TOPICS)
    texts = _texts(n, seed, topics)
    return [
        {"id": f"{prefix}{i:05d}", "text": t, "embedding": v.tolist()}
        for i, (v, t) in enumerate(zip(x, texts, strict=True))
    ]


BASE = _records(N, 1, "c", list(range(TOPICS)))
TARGETS = _records(24, 2, "t", [0, 1])


def _grow(client: Client) -> None:
    """30 new rows (most of topic 0 and words the pool never held) and 5 rows rewritten: the IDF moves."""
    batch = _records(30, 9, "new", [0, 0, TOPICS])
    batch += [{**r, "text": _texts(1, 100 + i, [TOPICS])[0]} for i, r in enumerate(BASE[:5])]
    client.ingest("pool", batch)


def _select(client: Client, **kwargs: Any) -> tuple[list[RankedCandidate], SelectSummary]:
    """A fused Select of every row; bound 0.2 unless given (the growth is 35 / 430 rows written)."""
    kwargs.setdefault("max_staleness", 0.2)
    return client.select("pool", TARGETS, k=N + 100, cost="fused", embedding_weight=W, **kwargs)


def _ranking(ranked: list[RankedCandidate]) -> list[tuple[str, float]]:
    return [(c.id, c.score) for c in ranked]


def _entries(url: str, prefix: str) -> dict[str, PotentialEntry]:
    """Every potential (``p``) and epoch-values (``f``) entry in Redis, by kind."""
    with redis.Redis.from_url(url) as r:
        keys = [k for k in r.scan_iter(match=f"{prefix}pot:*") if b"cost_validation" not in k]
        return {("f" if k.endswith(b":f") else "p"): decode_entry(bytes(r.get(k))) for k in keys}


def _y(idf: np.ndarray) -> torch.Tensor:
    """The targets' fused rows as the server builds them (unit embeddings, sketches under ``idf``)."""
    v = np.array([t["embedding"] for t in TARGETS], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return torch.from_numpy(fused_matrix(v, tf_rows([t["text"] for t in TARGETS]), idf, W))


def _c_transform(
    vectors: np.ndarray, tf: np.ndarray | SparseRows, idf: np.ndarray, g: np.ndarray, eps: float
) -> np.ndarray:
    """The reference: fused rows under ``idf`` through the c-transform of ``g`` (float32), from the rows
    in the form given (a snapshot's sparse rows: the server's sums, bit for bit)."""
    x = pool_features(vectors, tf, Cost.FUSED, W, SketchFactors.under(tf, idf)).x
    return c_transform(x, _y(idf), torch.from_numpy(g.copy()), eps=eps).numpy()


def test_fused_epoch_scores_changed_rows_under_its_idf_and_g(
    client: Client, server: BackgroundServer, redis_url: str, redis_prefix: str
) -> None:
    client.ingest("pool", BASE)
    store = server.running.store
    at_v = store.load_vectors("pool")
    _, cold = _select(client)
    assert (cold.cost, cold.solved, cold.rows_scored) == ("fused", True, N)
    opened = _entries(redis_url, redis_prefix)
    idf_v = SketchFactors.of(at_v.sketches, at_v.deleted).idf  # type: ignore[arg-type]
    assert opened["p"].idf is not None
    assert opened["p"].idf.tobytes() == idf_v.tobytes()
    _grow(client)
    ranked, s = _select(client)
    assert (s.solved, s.cache_hit, s.epoch_version, s.rows_scored) == (False, True, cold.pool_version, 35)
    held = server.running.engine.sketches.held()
    assert [v for _pool, _uid, v in held] == [cold.pool_version]  # the grown pool's IDF: never computed
    assert s.staleness == pytest.approx(35 / (N + 30))
    now = store.load_vectors("pool")
    assert now.sketches is not None
    assert SketchFactors.of(now.sketches, now.deleted).idf.tobytes() != idf_v.tobytes()  # the IDF moved
    entry = _entries(redis_url, redis_prefix)["f"]
    assert entry.f is not None
    assert entry.idf is not None
    assert entry.idf.tobytes() == idf_v.tobytes()
    assert opened["f"].f is not None
    changed = now.row_versions > np.uint64(cold.pool_version)
    assert int(changed.sum()) == 35
    g = opened["p"].g
    expected_changed = _c_transform(
        now.vectors[changed], now.sketches.take(np.flatnonzero(changed)), idf_v, g, s.eps
    )
    assert np.array_equal(entry.f[changed], expected_changed)
    assert np.array_equal(entry.f[~changed], opened["f"].f[~changed[:N]])  # kept from the epoch's pass
    f_full = _c_transform(now.vectors, now.sketches, idf_v, g, s.eps)
    dense = _c_transform(now.vectors, dense_sketches(now), idf_v, g, s.eps)  # the dense rows' sums
    np.testing.assert_allclose(f_full, dense, rtol=0, atol=1e-5)  # float32 rounding apart
    assert np.array_equal(entry.f, f_full)  # merged == a full pass with the same g and IDF
    scores = calibrated_gradient(torch.from_numpy(f_full)).numpy()
    expected = [(now.ids[i], float(v)) for i, v in top_k(scores, N + 100, ids=now.ids)]
    assert _ranking(ranked) == expected
    scored = client.score(
        "pool", TARGETS, ["new00003", "c00001", "c00300"], cost="fused", embedding_weight=W, max_staleness=0.2
    )
    by_id = dict(expected)
    assert [c.score for c in scored] == [by_id["new00003"], by_id["c00001"], by_id["c00300"]]
    _, fresh = _select(client, max_staleness=0.0)  # a fresh solve: the current pool's IDF
    assert fresh.solved
    assert fresh.epoch_version == fresh.pool_version
    newest = [
        e for e in _all_potentials(redis_url, redis_prefix) if e.meta["pool_version"] == fresh.pool_version
    ]
    assert [e.idf.tobytes() for e in newest if e.idf is not None] == [
        SketchFactors.of(now.sketches, now.deleted).idf.tobytes()
    ]


def _all_potentials(url: str, prefix: str) -> list[PotentialEntry]:
    with redis.Redis.from_url(url) as r:
        keys = [k for k in r.scan_iter(match=f"{prefix}pot:*") if not k.endswith(b":f")]
        return [decode_entry(bytes(r.get(k))) for k in keys if b"cost_validation" not in k]


def test_fused_epoch_same_answer_when_values_are_lost_garbage_or_redis_is_down(make_server: Any) -> None:
    with RedisServer() as private:
        srv: BackgroundServer = make_server(redis_url=private.url, redis_timeout_seconds=0.2)
        with Client(srv.address, timeout=60) as client:
            client.ingest("pool", BASE)
            _select(client)
            _grow(client)
            incremental, s = _select(client)
            assert s.rows_scored == 35
            r = redis.Redis.from_url(private.url)
            (key,) = [k for k in r.scan_iter(match="gotd:pot:*") if k.endswith(b":f")]
            good = bytes(r.get(key))
            entry = decode_entry(good)
            other_idf = PotentialEntry(entry.g, None, entry.meta, f=entry.f, idf=np.ones_like(entry.idf))
            answers = {}
            for name, value in {
                "garbage": b"\x00garbage",
                "truncated": good[:-9],
                "another idf": encode_entry(other_idf),
            }.items():
                r.set(key, value)
                srv.running.engine.epoch_values.forget(potentials=False)  # as a replica without them
                ranked, again = _select(client)
                assert again.rows_scored == N + 30, name
                assert not again.solved, name
                assert again.epoch_version == s.epoch_version, name
                answers[name] = _ranking(ranked)
            r.close()
            private.stop()
            srv.running.engine.epoch_values.forget(potentials=False)
            down, s_down = _select(client)  # this process still holds the epoch's potential
            assert s_down.epoch_version == s.epoch_version
            assert not s_down.solved
            answers["redis down"] = _ranking(down)
            assert all(a == _ranking(incremental) for a in answers.values())


def test_fused_potential_without_its_idf_is_a_miss(client: Client, redis_url: str, redis_prefix: str) -> None:
    client.ingest("pool", BASE)
    _, cold = _select(client)
    with redis.Redis.from_url(redis_url) as r:
        (key,) = [k for k in r.scan_iter(match=f"{redis_prefix}pot:*") if not k.endswith(b":f")]
        entry = decode_entry(bytes(r.get(key)))
        r.set(key, encode_entry(PotentialEntry(entry.g, entry.rows, entry.meta)))
    _grow(client)
    _, s = _select(client)
    assert s.solved  # never an epoch without the IDF it was solved under
    assert s.epoch_version == s.pool_version > cold.pool_version


def _auto(client: Client) -> tuple[list[RankedCandidate], SelectSummary]:
    """Cost auto (validated: the server validates from 24 targets), bound 0.2."""
    return client.select("pool", TARGETS, k=40, max_staleness=0.2)


def _served_by_epochs(cold: SelectSummary, grown: SelectSummary) -> None:
    """The grown pool's Select reused the cold one's validation and its setting's potential epoch."""
    assert cold.validation is not None
    assert grown.validation is not None
    assert (cold.validation.status, cold.validation.cache_hit) == ("validated", False)
    assert grown.validation.cache_hit
    assert f"validated at pool version {cold.pool_version} (" in grown.validation.detail
    assert replace(grown.validation, detail="", cache_hit=False) == replace(cold.validation, detail="")
    assert (grown.solved, grown.epoch_version, grown.rows_scored) == (False, cold.pool_version, 35)


def test_auto_cost_validation_and_its_settings_epoch_serve_the_grown_pool(
    make_server: Any, redis_url: str, redis_prefix: str
) -> None:
    srv: BackgroundServer = make_server(
        redis_url=redis_url, redis_prefix=redis_prefix, validation_min_targets=len(TARGETS)
    )
    with Client(srv.address, timeout=120) as client:
        client.ingest("pool", BASE)
        _, cold = _auto(client)
        _grow(client)
        ranked, s = _auto(client)
        again, hit = _auto(client)
    _served_by_epochs(cold, s)
    assert hit.validation == s.validation
    assert (hit.solved, hit.epoch_version) == (False, s.epoch_version)
    assert _ranking(again) == _ranking(ranked)


def test_two_processes_serve_each_others_fused_epochs(
    tmp_path: Path, make_server: Any, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``gotd serve`` process validates and solves; after the pool grows, an in-process server over
    the same store and Redis serves the grown pool from that validation and fused epoch (its IDF), and
    both answer the same ranking."""
    from tests.reliability.support import ServeProcess

    monkeypatch.setenv("GOTD_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("GOTD_VALIDATION_MIN_TARGETS", str(len(TARGETS)))
    data = tmp_path / "shared"
    with (
        ServeProcess(data, tmp_path / "serve.log", "--redis-url", redis_url).start() as first,
        Client(first.address, timeout=120) as a,
    ):
        a.ingest("pool", BASE)
        _, cold = _auto(a)
        _grow(a)
        other: BackgroundServer = make_server(
            data_dir=data, redis_url=redis_url, redis_prefix=redis_prefix, validation_min_targets=len(TARGETS)
        )
        with Client(other.address, timeout=120) as b:
            ranked_b, s_b = _auto(b)
            ranked_a, s_a = _auto(a)
    _served_by_epochs(cold, s_b)
    _served_by_epochs(cold, s_a)
    assert _ranking(ranked_a) == _ranking(ranked_b)


def test_a_row_rewritten_without_text_ends_the_fused_cost(client: Client) -> None:
    client.ingest("pool", BASE)
    _select(client)
    client.ingest("pool", [{"id": "c00007", "embedding": BASE[7]["embedding"]}])  # no text: no sketch
    with pytest.raises(grpc.RpcError) as err:
        _select(client)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _, auto = client.select("pool", TARGETS, k=10)
    assert auto.cost == "embedding"


def test_the_fused_cost_has_its_own_default_bound(make_server: Any) -> None:
    srv: BackgroundServer = make_server(max_staleness_fused=0.1)
    with Client(srv.address, timeout=60) as client:
        client.ingest("pool", BASE)
        _select(client, max_staleness=None)
        _grow(client)  # 35 / 430 = 0.081 of the pool written since
        _, within = _select(client, max_staleness=None)
        assert (within.solved, within.rows_scored) == (False, 35)
        client.ingest("pool", _records(30, 11, "more", [1]))  # 65 / 460 = 0.141
        _, past = _select(client, max_staleness=None)
        assert past.solved
        assert past.epoch_version == past.pool_version
    assert srv.running.settings.max_staleness == 0.2  # the embedding cost's default is another one
