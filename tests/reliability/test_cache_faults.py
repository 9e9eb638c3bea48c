"""Dual-cache faults on a private redis-server: garbage values, a slow Redis, Redis stopped mid-run.

Redis is a cache, never the source of truth: whatever it holds or however it fails, Select returns the
ranking of a healthy cache (ids and scores, exactly), its latency stays bounded by the cache timeout
(measured and reported, not asserted), and a failing Redis shows in health (``gotd.dual_cache``
NOT_SERVING while ``""`` stays SERVING) and in metrics (``gotd_dual_cache_healthy``, error events).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import xxhash
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gotd.cache.duals.codec import PotentialEntry, decode_entry, encode_entry
from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.server.service.app import CACHE_HEALTH
from tests.conftest import clustered, vector_records
from tests.redis_fixtures import RedisServer
from tests.reliability.support import latency_summary, metric_value, wait_until

pytestmark = pytest.mark.reliability

PREFIX = "gotd-rel:"
TIMEOUT = 0.25
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Ranking = tuple[tuple[str, ...], tuple[float, ...]]


class Rig:
    """A private Redis, a server using it, a pool of 3000 and a target set of 40; Select with timing."""

    def __init__(self, embedder: Any, tmp: Any) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.server = BackgroundServer(
            embedder=embedder,
            listen="127.0.0.1:0",
            data_dir=tmp,
            redis_url=self.redis.url,
            redis_prefix=PREFIX,
            redis_timeout_seconds=TIMEOUT,
            cache_check_seconds=0.2,
        )
        self.client = Client(self.server.address, timeout=120)
        self.client.ingest("pool", vector_records(clustered(3000, seed=11)), batch_size=1000)
        self.client.put_target_set("t", clustered(40, seed=12, centers=2).tolist())
        self.metrics = self.server.running.metrics

    def select(self) -> tuple[Ranking, bool, float]:
        started = time.perf_counter()
        ranked, summary = self.client.select("pool", "t", k=100)
        seconds = time.perf_counter() - started
        return (tuple(c.id for c in ranked), tuple(c.score for c in ranked)), summary.cache_hit, seconds

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=10)

    def entry_keys(self) -> list[bytes]:
        with self.redis_client() as r:
            return sorted(r.scan_iter(match=f"{PREFIX}pot:*"))

    def health(self, service: str) -> int:
        with grpc.insecure_channel(self.server.address) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)

    def events(self) -> dict[str, float]:
        names = ("hit", "miss", "error", "corrupt", "put", "fallback_hit")
        return {name: metric_value(self.metrics.cache_events, event=name) for name in names}

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.redis.close()


@pytest.fixture
def rig(embedder: Any, tmp_path: Any) -> Iterator[Rig]:
    r = Rig(embedder, tmp_path / "data")
    yield r
    r.close()


def _with_version(blob: bytes, version: int) -> bytes:
    """The same entry under another codec format version, with a valid checksum."""
    body = bytearray(blob[:-8])
    struct.pack_into("<H", body, 7, version)
    return bytes(body) + struct.pack("<Q", xxhash.xxh64_intdigest(bytes(body)))


def _entry(g: np.ndarray, meta: dict[str, Any]) -> bytes:
    return encode_entry(PotentialEntry(g=np.asarray(g, dtype=np.float32), rows=None, meta=meta))


def test_garbage_in_redis_gives_the_same_ranking(rig: Rig, figures: dict[str, Any]) -> None:
    """Values overwritten with garbage, another type, another codec version, the wrong shape, NaN or
    foreign metadata: each is a miss (recompute), never an error, and the ranking is the healthy one."""
    baseline, hit, cold_s = rig.select()
    assert not hit
    again, hit, warm_s = rig.select()
    assert hit
    assert again == baseline
    (key,) = [k for k in rig.entry_keys() if not k.endswith(b":f")]  # the potential, not its row values
    with rig.redis_client() as r:
        good = bytes(r.get(key))
    entry = decode_entry(good)
    meta = dict(entry.meta)
    m = entry.g.shape[0]
    faults: dict[str, Any] = {
        "garbage bytes": b"\x00garbage\xff" * 10,
        "empty value": b"",
        "list instead of string": None,
        "codec version 2": _with_version(good, 2),
        "truncated": good[: len(good) // 2],
        "g of the wrong shape": _entry(np.zeros(m + 3), meta),
        "g full of NaN": _entry(np.full(m, np.nan), meta),
        "g shifted, eps of another solve": _entry(entry.g * 3, {**meta, "eps": 1.0}),
        "metadata missing": _entry(entry.g, {}),
        "metadata of the wrong types": _entry(entry.g, {k: "x" for k in meta}),
    }
    results = {"cold Select": {"ms": round(cold_s * 1e3, 1)}, "cache hit": {"ms": round(warm_s * 1e3, 1)}}
    for name, value in faults.items():
        before = rig.events()
        with rig.redis_client() as r:
            r.delete(key)
            if value is None:
                r.rpush(key, b"a", b"b")
            else:
                r.set(key, value)
        ranking, hit, seconds = rig.select()
        after = rig.events()
        results[name] = {
            "ms": round(seconds * 1e3, 1),
            "cache_hit": hit,
            "corrupt_events": after["corrupt"] - before["corrupt"],
            "same_ranking": ranking == baseline,
        }
        assert ranking == baseline, name
        assert rig.health(CACHE_HEALTH) == SERVING  # Redis answered: the cache itself is healthy
        with rig.redis_client() as r:  # the recompute wrote a good entry back
            assert decode_entry(bytes(r.get(key))).g.shape == (m,)
    figures["scenarios"] = results
    assert metric_value(rig.metrics.rpcs, method="Select", code="INTERNAL") == 0


def test_poisoned_warm_start_is_ignored(rig: Rig, figures: dict[str, Any]) -> None:
    """A grown pool warm-starts from the family's newest cached potential: when that entry holds NaN or
    the latest pointer holds garbage, the solve runs cold and ranks exactly as a cold solve does."""
    rig.select()
    rig.client.ingest("pool", vector_records(clustered(30, seed=13), prefix="n"))
    with rig.redis_client() as r:
        (old_key,) = [k for k in r.scan_iter(match=f"{PREFIX}pot:*") if not k.endswith(b":f")]
        (latest,) = list(r.scan_iter(match=f"{PREFIX}latest:*"))
        old = decode_entry(bytes(r.get(old_key)))
        pointer = bytes(r.get(latest))
    # the reference: a cold solve of the grown pool (nothing to warm-start from)
    with rig.redis_client() as r:
        r.delete(latest)
    reference, hit, cold_s = rig.select()
    assert not hit
    results: dict[str, Any] = {"cold reference": {"ms": round(cold_s * 1e3, 1)}}
    poisons = {
        "previous potential full of NaN": (pointer, _entry(np.full(old.g.shape, np.nan), dict(old.meta))),
        "previous potential of another shape": (
            pointer,
            _entry(np.zeros(old.g.shape[0] + 1), dict(old.meta)),
        ),
        "latest pointer is binary garbage": (b"\xff\xfe\x00", None),
    }
    for name, (pointer_value, old_value) in poisons.items():
        with rig.redis_client() as r:
            for k in r.scan_iter(match=f"{PREFIX}pot:*"):
                r.delete(k)
            r.set(latest, pointer_value)
            if old_value is not None:
                r.set(old_key, old_value)
        ranking, hit, seconds = rig.select()
        results[name] = {"ms": round(seconds * 1e3, 1), "same_ranking": ranking == reference}
        assert not hit
        assert ranking == reference, name
    figures["scenarios"] = results


def test_slow_redis_bounded_by_the_cache_timeout(rig: Rig, figures: dict[str, Any]) -> None:
    """CLIENT PAUSE shorter than the timeout: a slower hit. Longer: the call times out after the cache
    timeout, the server recomputes (same ranking), health and metrics show the degraded cache, and both
    recover once Redis answers again."""
    baseline, _, _ = rig.select()
    _, _, hit_s = rig.select()
    results: dict[str, Any] = {"cache hit": {"ms": round(hit_s * 1e3, 1)}}
    with rig.redis_client() as admin:
        admin.execute_command("CLIENT", "PAUSE", int(TIMEOUT * 1e3 * 0.5), "ALL")
        ranking, hit, seconds = rig.select()
    results[f"paused {TIMEOUT * 500:.0f} ms (below the timeout)"] = {
        "ms": round(seconds * 1e3, 1),
        "cache_hit": hit,
    }
    assert ranking == baseline
    pause_ms = 4000
    errors_before = rig.events()["error"]
    with rig.redis_client() as admin:
        admin.execute_command("CLIENT", "PAUSE", pause_ms, "ALL")
    paused_at = time.monotonic()
    ranking, hit, seconds = rig.select()
    assert ranking == baseline
    assert wait_until(lambda: rig.health(CACHE_HEALTH) == NOT_SERVING, 5)
    assert rig.health("") == SERVING
    assert metric_value(rig.metrics.cache_healthy) == 0
    assert rig.events()["error"] > errors_before
    again, hit2, seconds2 = rig.select()  # Redis skipped while unhealthy: the in-process fallback
    assert again == baseline
    recovered = wait_until(lambda: rig.health(CACHE_HEALTH) == SERVING, pause_ms / 1e3 + 15, 0.05)
    results[f"paused {pause_ms} ms (beyond the timeout)"] = {"ms": round(seconds * 1e3, 1), "cache_hit": hit}
    results["next Select while degraded"] = {"ms": round(seconds2 * 1e3, 1), "cache_hit": hit2}
    results["health back to SERVING after the pause began"] = {"s": round(time.monotonic() - paused_at, 2)}
    assert recovered
    assert metric_value(rig.metrics.cache_healthy) == 1
    assert rig.select()[0] == baseline
    figures["timeout_ms"] = TIMEOUT * 1e3
    figures["scenarios"] = results


def test_redis_stopped_mid_run(rig: Rig, figures: dict[str, Any]) -> None:
    """Selects keep running while Redis is stopped and started again: every one returns the healthy
    ranking; health and metrics follow Redis down and back up."""
    baseline, _, _ = rig.select()
    phase = ["healthy"]
    timings: dict[str, list[float]] = {}
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        with Client(rig.server.address, timeout=60) as client:
            while not stop.is_set():
                name = phase[0]
                started = time.perf_counter()
                try:
                    ranked, _ = client.select("pool", "t", k=100)
                except grpc.RpcError as err:
                    failures.append(f"{name}: {err.code().name}")
                    continue
                timings.setdefault(name, []).append(time.perf_counter() - started)
                if (tuple(c.id for c in ranked), tuple(c.score for c in ranked)) != baseline:
                    failures.append(f"{name}: another ranking")

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(1.0)
        phase[0] = "redis stopped"
        rig.redis.stop()
        down = wait_until(lambda: rig.health(CACHE_HEALTH) == NOT_SERVING, 10)
        serving_while_down = rig.health("") == SERVING
        healthy_gauge_down = metric_value(rig.metrics.cache_healthy)
        time.sleep(1.5)
        phase[0] = "redis restarted"
        restarted_at = time.monotonic()
        rig.redis.start()
        up = wait_until(lambda: rig.health(CACHE_HEALTH) == SERVING, 20, 0.05)
        recovery_s = time.monotonic() - restarted_at
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(timeout=120)
    figures["selects"] = {name: latency_summary(values) for name, values in timings.items()}
    figures["failures"] = failures
    figures["health_recovery_s"] = round(recovery_s, 2)
    figures["events"] = rig.events()
    assert not failures
    assert down
    assert serving_while_down
    assert healthy_gauge_down == 0
    assert up
    assert metric_value(rig.metrics.cache_healthy) == 1
    assert all(timings.get(name) for name in ("healthy", "redis stopped", "redis restarted"))
    assert json.dumps(figures)  # figures are plain JSON
