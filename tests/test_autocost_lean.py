"""A validated cost without the pool's sketch rows: the validation reads its sample's rows from the store
and the pool version's sketch facts from its statistics, and chooses what it chose over every row.

The validation on the rows it reads equals the validation on all rows, bit for bit; over gRPC (real
server on port 0, real LMDB, real Redis), a pool whose store keeps its statistics and the same pool
without them (an older store: the whole sketch rows are loaded) give the same choice, scores and
ranking, the first holding the sketch rows only when a fused setting is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.layout import PoolRecord
from gotd.cache.store.sketchstats import stats_key
from gotd.client.client import Client
from gotd.client.types import SelectSummary
from gotd.server.selection.validation import DEFAULT_GRID, FALLBACK, FIXED_GRID, ValidationConfig, validate
from gotd.server.service.autocost import validation_rows
from gotd.server.service.pools import SnapshotMovedError
from gotd.server.service.sketched import PoolSketches
from tests._store_helpers import dense_sketches, unit_vectors
from tests.conftest import BackgroundServer
from tests.test_service_autocost import MIN_TARGETS, K, _setting, corpus  # noqa: F401  (the module's fixture)
from tests.test_sketch_stats import _check


def _pool(n: int, m: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    vectors = unit_vectors(n + m, 16, seed=seed)
    tf = (rng.random((n + m, 64)) < 0.1) * rng.integers(1, 4, (n + m, 64))
    tf[np.arange(n + m), rng.integers(0, 64, n + m)] += 1  # every row sketched
    tf = tf.astype(np.float16)
    keys = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2)
    idf = (np.log((1.0 + n) / (1.0 + np.count_nonzero(tf[:n], axis=0))) + 1.0).astype(np.float32)
    return vectors[:n], tf[:n], keys, idf, vectors[n:], tf[n:]


@pytest.mark.parametrize("grid", [DEFAULT_GRID, FIXED_GRID], ids=["learned", "fixed"])
@pytest.mark.parametrize("n", [3000, 200], ids=["sampled", "all-rows"])
def test_the_validation_on_the_rows_it_reads_is_the_validation_on_all(grid: Any, n: int) -> None:
    vectors, tf, keys, idf, t_vectors, t_tf = _pool(n, 90, seed=n)
    config = ValidationConfig(grid=grid, pool_sample=256, fit_sample=128, min_targets=30, threads=1)
    rows = np.flatnonzero(np.arange(n) % 3 != 1)  # a domain filter
    picked = validation_rows(config, keys, rows)
    assert len(picked) == min(len(rows), 256 + (128 if grid == DEFAULT_GRID else 0))
    kwargs: dict[str, Any] = {"seed": 7, "fraction": 0.05, "config": config}
    every = validate(vectors[rows], tf[rows], keys[rows], idf, t_vectors, t_tf, **kwargs)
    read = validate(vectors[picked], tf[picked], keys[picked], idf, t_vectors, t_tf, **kwargs)
    assert (read.chosen, read.scores, read.kept_default) == (every.chosen, every.scores, every.kept_default)
    assert (read.held_out, read.pool_sample, read.fraction) == (
        every.held_out,
        every.pool_sample,
        every.fraction,
    )
    assert (read.metric is None) == (every.metric is None)
    if every.metric is not None and read.metric is not None:
        np.testing.assert_array_equal(read.metric.factors, every.metric.factors)


def test_rows_of_a_snapshot_without_them_come_from_the_store_until_the_pool_moves(tmp_path: Path) -> None:
    from gotd.server.selection.sketches import tf_rows

    x = unit_vectors(40, 16, seed=1)
    records = [Record(id=f"r{i}", text=f"text {i} of topic {i % 4}", embedding=x[i]) for i in range(40)]
    with Store(tmp_path, sketcher=tf_rows) as store:
        store.upsert("p", records[:30], model="m", dim=16)
        full = store.load_vectors("p", upcast=False)
        lean = store.load_vectors("p", sketches=False, upcast=False)
        assert full.sketches is not None
        sketches = PoolSketches(1 << 20, store)
        assert sketches.from_store(lean)
        assert sketches.sketched(lean)
        idf = sketches.idf(lean)
        assert idf is not None
        np.testing.assert_array_equal(idf, PoolSketches(1 << 20).idf(full))  # from the rows
        rows = np.array([0, 7, 29])
        np.testing.assert_array_equal(sketches.rows(lean, rows), dense_sketches(full)[rows])
        store.upsert("p", records[30:], model="m", dim=16)
        with pytest.raises(SnapshotMovedError):
            sketches.rows(lean, rows)
        np.testing.assert_array_equal(sketches.rows(full, rows), dense_sketches(full)[rows])  # held: no read


def _forget_stats(store: Store, pool: str) -> None:
    """The pool as an older gotd left it: no sketch statistics."""
    raw = store.env.read(lambda txn: txn.get(pool.encode(), db=store.env.dbs["pools"]))
    prefix = PoolRecord.decode(pool, raw).prefix
    store.env.write(lambda txn: txn.delete(stats_key(prefix), db=store.env.dbs["meta"]))


def _with_sketch_rows(srv: BackgroundServer, pool: str) -> list[bool]:
    """For each snapshot of ``pool`` held: whether it holds the sketch rows."""
    return [key[3] for key in srv.running.engine._pools._items.held_keys() if key[0] == pool]


def _run(client: Client, pool: str, targets: list[str], **options: Any) -> tuple[list[Any], SelectSummary]:
    ranked, summary = client.select(pool, targets, k=K, **options)
    return [(c.id, c.score) for c in ranked], summary


@pytest.mark.parametrize("targets_used", [36, 20], ids=["validated", "fallback-fused"])
def test_a_lean_load_chooses_and_ranks_as_a_whole_load(
    make_server: Any,
    redis_url: str,
    redis_prefix: str,
    corpus: tuple[list[dict[str, Any]], list[str]],  # noqa: F811
    targets_used: int,
) -> None:
    pool, targets = corpus
    targets = targets[:targets_used]
    srv = make_server(redis_url=redis_url, redis_prefix=redis_prefix, validation_min_targets=MIN_TARGETS)
    with Client(srv.address, timeout=120) as client:
        client.ingest("kept", pool)
        client.ingest("older", pool)
        _forget_stats(srv.running.store, "older")
        kept_ranked, kept = _run(client, "kept", targets)
        older_ranked, older = _run(client, "older", targets)
        assert kept.validation is not None
        assert older.validation is not None
        assert kept.validation == older.validation  # status, detail, setting, every score
        assert kept_ranked == older_ranked
        assert _with_sketch_rows(srv, "older") == [True]  # no statistics: the sketch rows loaded
        _check(srv.running.store, "older")  # built from them and kept: a pass over the rows
        assert _with_sketch_rows(srv, "kept") == [kept.cost == "fused"]  # only for a fused setting
        if targets_used < MIN_TARGETS:
            assert kept.validation.status == "fallback"
            w, eps = FALLBACK.embedding_weight, FALLBACK.relative_eps
            explicit, _ = _run(client, "kept", targets, cost="fused", embedding_weight=w, relative_eps=eps)
            assert explicit == kept_ranked
        again_ranked, again = _run(client, "kept", targets)
        assert again.validation is not None
        assert again.validation.cache_hit == (targets_used >= MIN_TARGETS)
        assert again_ranked == kept_ranked


def test_score_on_a_lean_load_scores_as_on_a_whole_load(
    make_server: Any,
    redis_url: str,
    redis_prefix: str,
    corpus: tuple[list[dict[str, Any]], list[str]],  # noqa: F811
) -> None:
    pool, targets = corpus
    ids = [r["id"] for r in pool[::7]]
    srv = make_server(redis_url=redis_url, redis_prefix=redis_prefix, validation_min_targets=MIN_TARGETS)
    with Client(srv.address, timeout=120) as client:
        client.ingest("kept", pool)
        client.ingest("older", pool)
        _forget_stats(srv.running.store, "older")
        kept = client.score("kept", targets, ids)
        older = client.score("older", targets, ids)
    assert [(c.id, c.score) for c in kept] == [(c.id, c.score) for c in older]


def test_a_write_during_the_validation_starts_the_request_again_on_the_new_version(
    make_server: Any,
    redis_url: str,
    redis_prefix: str,
    corpus: tuple[list[dict[str, Any]], list[str]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool, targets = corpus
    late = {"id": "late", "text": pool[0]["text"] + " Written while the validation read its rows."}
    racing = make_server(redis_url=redis_url, redis_prefix=redis_prefix, validation_min_targets=MIN_TARGETS)
    reference = make_server(
        redis_url=redis_url, redis_prefix=redis_prefix + "ref:", validation_min_targets=MIN_TARGETS
    )
    running = racing.running
    real, raced = running.engine.sketches.rows, []

    def rows_after_a_write(arrays: Any, picked: np.ndarray) -> np.ndarray:
        if not raced:  # the first read of the sample's rows: a write lands just before it
            raced.append(arrays.version)
            vector = running.embedder.encode([late["text"]])[0]
            record = Record(id=late["id"], text=late["text"], embedding=vector)
            running.store.upsert("p", [record], model=running.embedder.model_id, dim=running.embedder.dim)
        return real(arrays, picked)

    monkeypatch.setattr(running.engine.sketches, "rows", rows_after_a_write)
    retries = running.metrics.snapshot_retries.labels("prepare")
    with Client(racing.address, timeout=120) as client, Client(reference.address, timeout=120) as other:
        client.ingest("p", pool)
        first = running.store.get_pool("p").version
        before = retries._value.get()
        ranked, summary = _run(client, "p", targets)
        assert raced == [first], "the lean load read its sample's rows once, at the version it loaded"
        assert retries._value.get() == before + 1
        assert summary.pool_version == running.store.get_pool("p").version > first
        assert summary.pool_size == len(pool) + 1
        other.ingest("p", pool)
        other.ingest("p", [late])
        expected, at_rest = _run(other, "p", targets)  # the same rows, written without a race
        assert ranked == expected
        assert summary.validation is not None
        assert at_rest.validation is not None
        assert summary.validation.settings == at_rest.validation.settings
        assert _setting(summary.validation) == _setting(at_rest.validation)
