"""Load: 32 concurrent clients mixing Select, Score and Ingest for a bounded time on 127.0.0.1.

Reported: RPCs done, failures (must be 0), p50/p99 latency per method, the server's RSS before, during
and after. Over the concurrency limit (``max_concurrent_rpcs``) excess calls get RESOURCE_EXHAUSTED and
the server keeps serving.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, ScoredCandidate
from gotd.lab.demo import BackgroundServer
from tests.conftest import clustered, vector_records
from tests.reliability.reference import (
    Ranking,
    as_ranking,
    assert_same_ranking,
    reference_ranking,
    reference_scores,
    same_ranking,
)
from tests.reliability.support import (
    ServeProcess,
    latency_summary,
    metric_value,
    mib,
    percentile,
    rss_bytes,
    wait_until,
)

pytestmark = pytest.mark.reliability

CLIENTS = 32
POOL = 5000
TARGET_SETS = ("t0", "t1", "t2", "t3")


@dataclass(frozen=True)
class References:
    """The reference answers of the load: per target set, the top-50 ranking and every row's score."""

    ids: list[str]
    rankings: dict[str, Ranking]
    scores: dict[str, dict[str, float]]


def _prepare(address: str) -> References:
    pool = clustered(POOL, seed=31)
    ids = [f"c{i:05d}" for i in range(POOL)]
    targets = {name: clustered(32, seed=40 + i, centers=2) for i, name in enumerate(TARGET_SETS)}
    with Client(address, timeout=300) as client:
        client.ingest("main", vector_records(pool), batch_size=1000)
        for name, vectors in targets.items():
            client.put_target_set(name, vectors.tolist())
    return References(
        ids,
        {name: reference_ranking(pool, ids, y, 50) for name, y in targets.items()},
        {
            name: dict(zip(ids, reference_scores(pool, ids, y).tolist(), strict=True))
            for name, y in targets.items()
        },
    )


def _check_select(reference: Ranking | None, answer: tuple[list[RankedCandidate], Any]) -> bool:
    """A Select on a target set ranks exactly as the reference (an inline cold target: 50 in order)."""
    got = as_ranking(answer[0])
    if reference is None:
        return len(got) == 50 and [s for _, s in got] == sorted(s for _, s in got)
    return same_ranking(got, reference)


def _check_score(reference: dict[str, float], answer: list[ScoredCandidate]) -> bool:
    return same_ranking([(c.id, c.score) for c in answer], [(c.id, reference[c.id]) for c in answer])


def _client_loop(
    address: str, index: int, until: float, refs: References, out: list[tuple[str, float, str]]
) -> None:
    """One client: a seeded mix of 55% Select, 30% Score, 15% Ingest until ``until``."""
    rng = random.Random(index)
    calls = 0
    with Client(address, timeout=120) as client:
        while time.monotonic() < until:
            calls += 1
            roll = rng.random()
            target: Any = rng.choice(TARGET_SETS)
            call: Callable[[], Any]
            check: Callable[[Any], bool] = lambda _answer: True  # noqa: E731
            if roll < 0.55:
                method = "Select"
                reference = refs.rankings[target]
                if rng.random() < 0.1:  # a cold solve on an inline target
                    target, reference = clustered(8, seed=1000 * index + calls).tolist(), None
                call = functools.partial(client.select, "main", target, k=50)
                check = functools.partial(_check_select, reference)
            elif roll < 0.85:
                method = "Score"
                call = functools.partial(client.score, "main", target, rng.sample(refs.ids, 16))
                check = functools.partial(_check_score, refs.scores[target])
            else:
                method = "Ingest"
                vectors = clustered(64, seed=100_000 + 1000 * index + calls)
                records = vector_records(vectors, prefix=f"w{index:02d}-{calls:05d}-")
                call = functools.partial(client.ingest, "ingest", records)
            out.append(_timed(method, call, check))


def _timed(
    method: str, call: Callable[[], Any], check: Callable[[Any], bool] = lambda _answer: True
) -> tuple[str, float, str]:
    """Run one call: its method, seconds and code (WRONG_ANSWER when it differs from the reference)."""
    started = time.perf_counter()
    code = "OK"
    try:
        answer = call()
    except grpc.RpcError as err:
        code = err.code().name
    else:
        code = "OK" if check(answer) else "WRONG_ANSWER"
    return method, time.perf_counter() - started, code


def run_load(
    address: str, rss_of: Callable[[], int], seconds: float, clients: int = CLIENTS
) -> dict[str, Any]:
    """Run ``clients`` client threads for ``seconds``; the figures of the run (RSS sampled every 0.25 s)."""
    refs = _prepare(address)
    with Client(address, timeout=120) as warm:  # first solves and pool loads happen before the clock
        for name in TARGET_SETS:
            assert_same_ranking(as_ranking(warm.select("main", name, k=50)[0]), refs.rankings[name])
    rss_before = rss_of()
    samples: list[tuple[float, int]] = []
    results: list[tuple[str, float, str]] = []
    started = time.monotonic()
    until = started + seconds
    threads = [
        threading.Thread(target=_client_loop, args=(address, i, until, refs, results)) for i in range(clients)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - started, rss_of()))
        time.sleep(0.25)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    rss_after = rss_of()
    codes = Counter(code for _, _, code in results)
    half = [rss for at, rss in samples if at <= seconds / 2]
    late = [rss for at, rss in samples if at > seconds / 2]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "rpcs": len(results),
        "rpcs_per_s": round(len(results) / elapsed, 1),
        "failures": len(results) - codes["OK"],
        "codes": dict(codes),
        "latency": {"all": latency_summary([s for _, s, _ in results])}
        | {m: latency_summary([s for k, s, _ in results if k == m]) for m in ("Select", "Score", "Ingest")},
        "rss_mib": {
            "before": mib(rss_before),
            "peak": mib(max(rss for _, rss in samples)) if samples else None,
            "first_half_max": mib(max(half)) if half else None,
            "second_half_max": mib(max(late)) if late else None,
            "after": mib(rss_after),
        },
        "p99_all_ms": round(percentile([s for _, s, _ in results], 99) * 1e3, 1),
    }


def _check(figures: dict[str, Any]) -> None:
    assert figures["rpcs"] > 0
    assert figures["failures"] == 0, figures["codes"]
    assert all(figures["latency"][m]["n"] > 0 for m in ("Select", "Score", "Ingest"))


def test_load_in_process(make_server: Any, figures: dict[str, Any]) -> None:
    """32 clients for 6 s against an in-process server: no failure (RSS is of the whole test process)."""
    srv = make_server()
    figures.update(run_load(srv.address, rss_bytes, seconds=6.0))
    figures["rss_of"] = "test process (server and clients)"
    _check(figures)
    assert wait_until(lambda: metric_value(srv.running.metrics.in_flight) == 0, 30)


@pytest.mark.slow
def test_load_gotd_serve(tmp_path: Path, figures: dict[str, Any]) -> None:
    """32 clients for 45 s against a real ``gotd serve``: no failure; the server's RSS before/during/after."""
    with ServeProcess(tmp_path / "data", tmp_path / "serve.log").start() as srv:
        figures.update(run_load(srv.address, lambda: rss_bytes(srv.pid), seconds=45.0))
        figures["rss_of"] = "gotd serve process"
        figures["startup_s"] = round(srv.startup_seconds, 1)
        assert srv.alive
    _check(figures)
    rss = figures["rss_mib"]
    assert rss["second_half_max"] <= 1.5 * rss["first_half_max"] + 256, rss  # no runaway growth


def test_over_the_concurrency_limit_is_resource_exhausted(
    embedder: Any, tmp_path: Path, figures: dict[str, Any]
) -> None:
    """With max_concurrent_rpcs=4, a burst of 24 cold Selects: the excess gets RESOURCE_EXHAUSTED, the
    rest succeed, nothing else; the server serves normally afterwards."""
    srv = BackgroundServer(
        embedder=embedder, listen="127.0.0.1:0", data_dir=tmp_path / "data", max_concurrent_rpcs=4
    )
    try:
        with Client(srv.address, timeout=120) as client:
            client.ingest("main", vector_records(clustered(POOL, seed=31)), batch_size=1000)
        gate = threading.Barrier(24)
        results: list[tuple[str, float, str]] = []

        def one(i: int) -> None:
            with Client(srv.address, timeout=120) as client:
                target = clustered(64, seed=500 + i).tolist()
                gate.wait()
                results.append(_timed("Select", lambda: client.select("main", target, k=20, eps=0.05)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = Counter(code for _, _, code in results)
        figures.update(
            limit=4,
            burst=24,
            codes=dict(codes),
            latency=latency_summary([s for _, s, c in results if c == "OK"]),
        )
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert codes["RESOURCE_EXHAUSTED"] > 0
        assert codes["OK"] >= 4
        assert wait_until(lambda: metric_value(srv.running.metrics.in_flight) == 0, 60)
        with Client(srv.address, timeout=120) as client:
            target = clustered(4, seed=9)
            want = reference_ranking(clustered(POOL, seed=31), [f"c{i:05d}" for i in range(POOL)], target, 5)
            assert_same_ranking(as_ranking(client.select("main", target.tolist(), k=5)[0]), want)
    finally:
        srv.stop()
