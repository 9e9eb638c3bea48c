"""Row deletes over a real server, Redis and LMDB: a deleted candidate is gone from every answer (the
solve, the calibration sum, rankings, Score) exactly as if it had never been ingested, drops out of a
potential epoch as a changed row, and comes back when ingested again."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import torch

from gotd.cache.duals.codec import decode_entry
from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.demo import BackgroundServer
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.topk import top_k
from tests.conftest import clustered, vector_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 400
TARGETS = clustered(25, seed=2, centers=2)
GONE = [f"c{i:05d}" for i in (0, 3, 17, 18, 150, 399)]
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa"]


def _records(n: int = N) -> list[dict[str, Any]]:
    """Records with an embedding and a short text (so the fused cost has sketches, no encoder needed)."""
    out = vector_records(clustered(n, seed=1))
    for i, r in enumerate(out):
        r["text"] = f"{WORDS[i % 8]} {WORDS[(i // 8) % 8]} {WORDS[(i * 7) % 8]} item {i % 13}"
    return out


def _targets() -> list[dict[str, Any]]:
    return [
        {"id": f"t{j}", "embedding": v.tolist(), "text": f"{WORDS[j % 8]} item"}
        for j, v in enumerate(TARGETS)
    ]


def _select(client: Client, **kwargs: Any) -> tuple[list[RankedCandidate], SelectSummary]:
    return client.select("pool", _targets(), k=N, near_copy_cosine=0.0, **kwargs)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "exact", "cost": "embedding"},
        {"mode": "global", "cost": "embedding", "summary_size": 96},
        {"mode": "exact", "cost": "fused", "embedding_weight": 0.6},
    ],
    ids=["exact", "global", "exact-fused"],
)
def test_delete_then_select_equals_a_fresh_pool_without_those_rows(
    make_server: Any, options: dict[str, Any]
) -> None:
    records = _records()
    deleted_srv, fresh_srv = make_server(), make_server()
    with Client(deleted_srv.address, timeout=120) as deleted, Client(fresh_srv.address, timeout=120) as fresh:
        version = deleted.ingest("pool", records).info.version
        result = deleted.delete_records("pool", [*GONE, "not-there", GONE[0]])
        assert (result.deleted, result.not_found, result.info.count) == (6, 1, N - 6)
        assert result.info.version == version + 1
        fresh.ingest("pool", [r for r in records if r["id"] not in GONE])
        got, s_got = _select(deleted, **options)
        want, s_want = _select(fresh, **options)
    assert [(c.id, c.score) for c in got] == [(c.id, c.score) for c in want]
    assert len(got) == N - 6
    assert not set(GONE) & {c.id for c in got}
    assert (s_got.pool_size, s_got.eligible, s_got.cost) == (N - 6, N - 6, options["cost"])
    assert (s_got.ot_distance, s_got.iterations) == (s_want.ot_distance, s_want.iterations)


def _epoch_entry(url: str, prefix: str) -> Any:
    with redis.Redis.from_url(url) as r:
        (key,) = [k for k in r.scan_iter(match=f"{prefix}pot:*") if k.endswith(b":f")]
        return decode_entry(bytes(r.get(key)))


def test_an_epoch_after_deletes_equals_a_full_pass_with_its_g(
    client: Client, server: BackgroundServer, redis_url: str, redis_prefix: str
) -> None:
    client.ingest("pool", vector_records(clustered(N, seed=1)))
    _, cold = _select(client, mode="exact", cost="embedding")
    assert cold.solved
    client.delete_records("pool", GONE)
    client.ingest("pool", vector_records(clustered(10, seed=9), prefix="new"))
    ranked, s = _select(client, mode="exact", cost="embedding")
    assert not s.solved
    assert s.cache_hit
    assert s.epoch_version == cold.pool_version
    assert s.rows_scored == 10  # the new rows only: deleted rows drop out, nothing else is scored
    assert s.staleness == pytest.approx(16 / (N + 10))  # deleted rows count as changed
    assert (s.pool_size, s.eligible) == (N + 4, N + 4)
    entry = _epoch_entry(redis_url, redis_prefix)
    arrays = server.running.store.load_vectors("pool")
    assert arrays.deleted is not None
    assert [arrays.ids[i] for i in np.flatnonzero(arrays.deleted)] == GONE
    y = torch.from_numpy(TARGETS / np.linalg.norm(TARGETS, axis=1, keepdims=True))
    f = c_transform(torch.from_numpy(arrays.vectors), y, torch.from_numpy(entry.g.copy()), eps=s.eps).numpy()
    live = np.flatnonzero(~arrays.deleted)
    assert np.array_equal(entry.f[live], f[live])
    scores = calibrated_gradient(torch.from_numpy(f[live])).numpy()
    ids = [arrays.ids[i] for i in live]
    expected = [(ids[i], float(v)) for i, v in top_k(scores, N, ids=ids)]
    assert [(c.id, c.score) for c in ranked] == expected


def test_deleted_ids_are_not_scored_and_come_back_when_ingested(client: Client) -> None:
    records = vector_records(clustered(N, seed=1))
    version = client.ingest("pool", records).info.version
    client.delete_records("pool", GONE[:2])
    targets = TARGETS.tolist()
    assert _code(lambda: client.score("pool", targets, [GONE[0], "c00001"])) == grpc.StatusCode.NOT_FOUND
    assert client.pool("pool").count == N - 2
    again = client.delete_records("pool", GONE[:2])  # deleted before: not found, nothing changes
    assert (again.deleted, again.not_found, again.info.version) == (0, 2, version + 1)
    back = client.ingest("pool", [records[0]])
    assert (back.inserted, back.updated, back.info.count, back.info.version) == (1, 0, N - 1, version + 2)
    ranked, s = client.select("pool", targets, k=N, mode="exact")
    assert GONE[0] in {c.id for c in ranked}
    assert GONE[1] not in {c.id for c in ranked}
    assert s.pool_size == N - 1
    by_id = {c.id: c.score for c in ranked}
    assert client.score("pool", targets, [GONE[0]])[0].score == by_id[GONE[0]]


def test_bad_delete_requests(client: Client) -> None:
    client.ingest("pool", vector_records(clustered(20, seed=1)))
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.delete_records("pool", [])) == bad
    assert _code(lambda: client.delete_records("pool", ["c00001", ""])) == bad
    assert _code(lambda: client.delete_records("pool", ["x" * 513])) == bad
    assert _code(lambda: client.delete_records("a b", ["c00001"])) == bad
    assert _code(lambda: client.delete_records("", ["c00001"])) == bad
    assert _code(lambda: client.delete_records("nope", ["c00001"])) == grpc.StatusCode.NOT_FOUND
    unknown = client.delete_records("pool", ["x", "y"])
    assert (unknown.deleted, unknown.not_found, unknown.info.count, unknown.info.version) == (0, 2, 20, 1)
    everything = client.delete_records("pool", [f"c{i:05d}" for i in range(20)])
    assert (everything.deleted, everything.info.count) == (20, 0)
    assert _code(lambda: client.select("pool", TARGETS.tolist(), k=5)) == bad


def test_the_kept_sum_follows_the_epoch_over_versions(
    client: Client, server: BackgroundServer, redis_url: str, redis_prefix: str
) -> None:
    """Two versions served by one epoch (deletes, then a revive, an update, a delete and new rows): the
    sum the scores are calibrated with is kept from version to version, and equals ``math.fsum`` over
    the live rows' values, so the ranking is a full pass's."""
    client.ingest("pool", vector_records(clustered(N, seed=1)))
    options = {"mode": "exact", "cost": "embedding", "max_staleness": 0.5}
    _, cold = _select(client, **options)
    client.delete_records("pool", GONE)
    _, first = _select(client, **options)
    batch = vector_records(clustered(2, seed=5), prefix="c")  # c00000 (deleted: revived), c00001 (updated)
    client.ingest("pool", batch + vector_records(clustered(5, seed=6), prefix="new"))
    client.delete_records("pool", ["c00010"])
    ranked, second = _select(client, **options)
    assert not first.solved
    assert not second.solved
    assert (first.epoch_version, second.epoch_version) == (cold.pool_version, cold.pool_version)
    assert second.rows_scored == 7  # scored from the first's values: only the rows written since
    arrays = server.running.store.load_vectors("pool")
    assert arrays.deleted is not None
    live = np.flatnonzero(~arrays.deleted)
    entry = _epoch_entry(redis_url, redis_prefix)
    key = [k for k in server.running.engine.epoch_values.held() if k.endswith(f":v{cold.pool_version}")]
    values = server.running.engine.epoch_values
    (kept,) = [values.get(k, entry.g, arrays.row_versions, arrays.version) for k in key]
    assert kept is not None
    y = torch.from_numpy(TARGETS / np.linalg.norm(TARGETS, axis=1, keepdims=True))
    f = c_transform(torch.from_numpy(arrays.vectors), y, torch.from_numpy(entry.g.copy()), eps=second.eps)
    f_live = f.numpy()[live]
    assert np.array_equal(kept.values[live], f_live)
    assert bool(np.isnan(kept.values[arrays.deleted]).all())
    assert kept.total.to_float() == math.fsum(f_live.astype(np.float64).tolist())
    scores = calibrated_gradient(torch.from_numpy(f_live)).numpy()
    ids = [arrays.ids[i] for i in live]
    assert [(c.id, c.score) for c in ranked] == [(ids[i], float(v)) for i, v in top_k(scores, N, ids=ids)]
