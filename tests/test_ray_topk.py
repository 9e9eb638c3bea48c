"""Ray without the full score vector: a sharded pass keeps its values on the workers and the driver
gets only exact sums, top-k pairs and chosen rows' scores, yet every ranking and score equals the
single process (the math reference, and a local server at the same g), with exclusions, ties, near
copies, k above a shard's rows, and a grown pool served by a potential epoch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.scoring import ScorePass
from gotd.server.selection.topk import top_k
from tests.conftest import clustered, vector_records

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]

N, M, BLOCK = 1000, 30, 100  # 10 blocks: 5 shards of 200 rows


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    x = torch.from_numpy(clustered(N, seed=11))
    x[500:560] = x[:60]  # identical rows in other shards: equal scores, ties by id
    y = torch.from_numpy(clustered(M, seed=12, centers=2))
    g = 0.05 * torch.randn(M, generator=torch.Generator().manual_seed(13))
    ids = [f"c{(i * 7919) % 100_003:06d}" for i in range(N)]  # id order differs from row order
    return x, y, g, ids


def test_sharded_pass_top_and_at_equal_the_single_process(ray_local: Any) -> None:
    from gotd.server.ray.backend import RayScorer

    x, y, g, ids = _problem()
    scores = calibrated_gradient(c_transform(x, y, g, eps=0.1)).numpy()
    best = [r for r, _ in top_k(scores, 40, ids=ids)]
    excluded = np.zeros(N, dtype=bool)
    excluded[best[::2]] = True  # half of the best rows, in several shards
    excluded[700:900] = True  # one whole shard
    cases = [
        (10, None),
        (40, excluded),  # the shards skip them: still k eligible rows, no short answer
        (350, None),  # k above a shard's 200 rows
        (350, excluded),
        (None, excluded),  # every eligible row
        (N + 5, None),
    ]
    with RayScorer(workers=2, shards=5, block_size=BLOCK) as scorer:
        run = scorer.open_pass(ScorePass(x, y, g, 0.1, "pool:uid:v1:all", lambda _d, _n: None), ids)
        opened = run.stats.received
        assert 0 < opened <= 5 * 40  # five exact sums (mantissa and exponent), no values
        assert run.total_value == math.fsum(c_transform(x, y, g, eps=0.1).numpy().tolist())
        for k, mask in cases:
            before = run.stats.received
            eligible = None if mask is None else ~mask
            got = run.top(k, None if mask is None else np.flatnonzero(mask))
            want = top_k(scores, k, ids=ids, eligible=eligible)
            assert got == want, (k, mask is not None)  # same rows, same order, equal scores
            # each shard sends at most k pairs (12 bytes each), never its 200 values
            per_shard = 200 if k is None else min(k, 200)
            assert run.stats.received - before <= 5 * 12 * per_shard
        chosen = np.array([999, 3, 3, 512, 0, 777], dtype=np.int64)
        assert np.array_equal(run.at(chosen), scores[chosen])
        # A worker that dies between rounds loses shards and values: the next round places the
        # snapshot again, the workers score again from the pass's g, and the answer is unchanged.
        ray_local.kill(scorer._workers[0], no_restart=False)
        assert run.top(40, np.flatnonzero(excluded)) == top_k(scores, 40, ids=ids, eligible=~excluded)


def _pool(n: int) -> list[dict[str, Any]]:
    x = clustered(n, seed=21)
    x[n // 2 : n // 2 + 150] = x[:150]  # exact copies: score ties and near copies across shards
    records = vector_records(x)
    for i, r in enumerate(records):
        r["id"] = f"c{(i * 7919) % 100_003:06d}"
    return records


def _ray_server(make_server: Any) -> BackgroundServer:
    """A server on the local Ray whose scorer cuts small pools into several shards of whole blocks."""
    from gotd.server.ray.backend import RayScorer

    server: BackgroundServer = make_server(ray_address="auto")
    engine = server.running.engine
    engine.scorer.close()
    engine.scorer = RayScorer(workers=2, shards=6, block_size=128)
    return server


WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa", "zeta"]


def _with_texts(records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The records with short texts (the fused cost's sketches; no encoder: embeddings are given)."""
    rng = np.random.default_rng(seed)
    return [{**r, "text": " ".join(rng.choice(WORDS, 6))} for r in records]


def _ranked(client: Client, cost: str = "embedding", **kwargs: Any) -> tuple[list[tuple[str, float]], Any]:
    targets: list[Any] = clustered(M, seed=22, centers=2).tolist()
    if cost == "fused":
        targets = _with_texts([{"id": f"t{i}", "embedding": v} for i, v in enumerate(targets)], 25)
    ranked, summary = client.select(
        "pool", targets, mode="global", eps=0.1, cost=cost, batch_size=97, **kwargs
    )
    return [(c.id, c.score) for c in ranked], summary


def test_ray_engine_ranks_from_shard_top_k_like_the_local_engine(ray_local: Any, make_server: Any) -> None:
    n = 3000  # 24 blocks of 128 rows: 6 shards of 512 rows
    pool = _pool(n)
    requests: list[dict[str, Any]] = [
        {"k": 50, "near_copy_cosine": 0.0},
        {"k": 50, "near_copy_cosine": 0.0, "exclude_ids": []},  # filled below with the best ids
        {"k": 700, "near_copy_cosine": 0.0},  # k above a shard's rows
        {"k": 300},  # near copies skipped: the walk asks the shards for more than k
        {"k": 300, "report_near_copies": True, "exclude_ids": []},
    ]
    local = make_server()
    ray_server = _ray_server(make_server)
    try:
        with Client(local.address, timeout=120) as lc, Client(ray_server.address, timeout=120) as rc:
            lc.ingest("pool", pool)
            rc.ingest("pool", pool)
            first, _ = _ranked(lc, k=50, near_copy_cosine=0.0)
            excluded = [cid for cid, _ in first[::3]] + [pool[-1]["id"], "not-in-pool"]
            requests[1]["exclude_ids"] = excluded
            requests[4]["exclude_ids"] = excluded
            scorer = ray_server.running.engine.scorer
            for request in requests:
                want, want_summary = _ranked(lc, **request)
                got, got_summary = _ranked(rc, **request)
                assert got == want, request  # ids, order and scores, bit for bit
                assert len(got) == request["k"]
                assert got_summary.near_copies_skipped == want_summary.near_copies_skipped
                assert got_summary.near_copies == want_summary.near_copies
                assert not set(request.get("exclude_ids", [])) & {cid for cid, _ in got}
                # what came back from the shards: exact sums and at most k pairs per shard (the
                # near-copy walk fetches max(1.25 k, 1024) first, all of these small shards)
                if request["k"] < 100:
                    assert scorer.last.received <= 6 * (12 * request["k"] + 40) < 4 * n
            assert got_summary.near_copies_skipped > 0
            # the same request again: the same answer (the workers answer from their kept values)
            assert _ranked(rc, **requests[3])[0] == _ranked(rc, **requests[3])[0]
            ids = [r["id"] for r in pool[::37]]
            targets = clustered(M, seed=22, centers=2).tolist()
            kwargs: dict[str, Any] = {"mode": "global", "eps": 0.1, "cost": "embedding"}
            assert rc.score("pool", targets, ids, **kwargs) == lc.score("pool", targets, ids, **kwargs)
            assert scorer.last.received <= 4 * len(ids) + 6 * 40
            # deleted rows leave the pass (and its calibration sum) on both paths
            gone = [cid for cid, _ in first[:10]]
            lc.delete_records("pool", gone)
            rc.delete_records("pool", gone)
            want, _ = _ranked(lc, k=50, near_copy_cosine=0.0)
            got, _ = _ranked(rc, k=50, near_copy_cosine=0.0)
            assert got == want
            assert not set(gone) & {cid for cid, _ in got}
    finally:
        ray_server.running.engine.scorer.close()


@pytest.mark.parametrize("cost", ["embedding", "fused"])
def test_ray_engine_after_growth_equals_the_local_incremental_epoch(
    ray_local: Any, make_server: Any, cost: str
) -> None:
    """The grown pool is served by the epoch's g (fused: and IDF) on both paths: the local engine scores
    the changed rows and merges kept values, the Ray engine makes one sharded pass; the rankings are the
    same."""
    n = 1500
    pool = _pool(n)
    added = vector_records(clustered(40, seed=23), prefix="new")
    rewritten = vector_records(clustered(5, seed=24))
    for record, existing in zip(rewritten, pool[:5], strict=True):
        record["id"] = existing["id"]  # five existing rows rewritten
    added += rewritten
    if cost == "fused":
        pool, added = _with_texts(pool, 26), _with_texts(added, 27)
    local = make_server()
    ray_server = _ray_server(make_server)
    try:
        with Client(local.address, timeout=120) as lc, Client(ray_server.address, timeout=120) as rc:
            runs, summaries = [], []
            for client in (lc, rc):
                client.ingest("pool", pool)
                _, cold = _ranked(client, cost, k=200)
                client.ingest("pool", added)
                grown, summary = _ranked(client, cost, k=200)
                assert (summary.cost, summary.epoch_version, summary.solved) == (
                    cost,
                    cold.pool_version,
                    False,
                )
                assert _ranked(client, cost, k=200)[0] == grown  # same request, same version and epoch
                runs.append(grown)
                summaries.append(summary)
            assert runs[1] == runs[0]  # ids, order and scores, bit for bit
            assert summaries[0].rows_scored == 45  # the local engine: only the rows written since
            assert summaries[1].pool_size == n + 40
            assert summaries[1].rows_scored == n + 40  # Ray: one sharded pass, values stay on the workers
    finally:
        ray_server.running.engine.scorer.close()
