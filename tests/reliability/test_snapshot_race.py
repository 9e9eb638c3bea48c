"""One snapshot per request: Select and Score race a stream of ingests (issue 18).

Score used to read the pool's arrays and its id→row lookup in separate transactions: an id committed
in between was "outside the domains kept" (INVALID_ARGUMENT). Select read the pool's description and
its arrays separately too. Now a request that sees the pool change under it reads a newer snapshot.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest

from gotd.client.client import Client
from tests.conftest import clustered, vector_records
from tests.reliability.support import metric_value

pytestmark = pytest.mark.reliability

POOL, BATCH, BATCHES = 2000, 100, 40


def test_select_and_score_race_ingest(make_server: Any, figures: dict[str, Any]) -> None:
    """Scores of ids being ingested at that moment and Selects run against a stream of ingests: every
    Score is OK or NOT_FOUND (id not committed yet), never INVALID_ARGUMENT; every Select is OK and its
    pool size is the one of its pool version."""
    srv = make_server(default_mode="exact")
    vectors = clustered(POOL + BATCH * BATCHES, seed=41)
    records = vector_records(vectors)
    targets = clustered(16, seed=42, centers=2).tolist()
    with Client(srv.address, timeout=120) as client:
        v0 = client.ingest("race", records[:POOL], batch_size=1000).info.version
    acked: list[str] = [r["id"] for r in records[:POOL]]
    in_flight: list[str] = []
    done = threading.Event()
    score_codes: Counter[str] = Counter()
    select_codes: Counter[str] = Counter()
    sizes_ok: list[bool] = []
    errors: list[str] = []

    def ingest() -> None:
        with Client(srv.address, timeout=120) as client:
            for b in range(BATCHES):
                batch = records[POOL + b * BATCH : POOL + (b + 1) * BATCH]
                in_flight[:] = [r["id"] for r in batch]
                client.ingest("race", batch, batch_size=BATCH)
                acked.extend(in_flight)
        done.set()

    def score(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with Client(srv.address, timeout=120) as client:
            while not done.is_set():
                fresh = list(in_flight)[:5]
                old = [acked[i] for i in rng.integers(0, len(acked), 5)]
                ids = list(dict.fromkeys(old + fresh))
                try:
                    scored = client.score("race", targets, ids)
                except grpc.RpcError as err:
                    score_codes[err.code().name] += 1
                    if err.code() is not grpc.StatusCode.NOT_FOUND:
                        errors.append(f"Score: {err.code().name}: {err.details()}")
                    continue
                score_codes["OK"] += 1
                if [s.id for s in scored] != ids:
                    errors.append(f"Score answered {[s.id for s in scored]} for {ids}")

    def select() -> None:
        with Client(srv.address, timeout=120) as client:
            while not done.is_set():
                try:
                    ranked, summary = client.select("race", targets, k=20)
                except grpc.RpcError as err:
                    select_codes[err.code().name] += 1
                    errors.append(f"Select: {err.code().name}: {err.details()}")
                    continue
                select_codes["OK"] += 1
                sizes_ok.append(summary.pool_size == POOL + BATCH * (summary.pool_version - v0))
                if len(ranked) != 20:
                    errors.append(f"Select returned {len(ranked)} of 20")

    threads = [threading.Thread(target=ingest)]
    threads += [threading.Thread(target=score, args=(s,)) for s in range(2)]
    threads += [threading.Thread(target=select)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    retries = srv.running.metrics.snapshot_retries
    figures.update(
        ingest_batches=BATCHES,
        score_codes=dict(score_codes),
        select_codes=dict(select_codes),
        score_retries=metric_value(retries, step="score"),
        prepare_retries=metric_value(retries, step="prepare"),
        select_sizes_consistent=f"{sum(sizes_ok)}/{len(sizes_ok)}",
    )
    assert not errors, errors[:5]
    assert all(sizes_ok)
    assert score_codes["OK"] > 0
    assert select_codes["OK"] > 0
