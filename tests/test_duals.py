"""The dual cache against real Redis: round trips, TTL, fallback, garbage, outages and slowness."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import xxhash

from gotd.cache.duals.cache import EVENTS, DualCache, cache_key
from gotd.cache.duals.codec import PotentialEntry, encode_entry
from gotd.cache.duals.lru import TtlLru
from tests.redis_fixtures import (
    RedisServer,
    delete_prefix,
    shared_redis_available,
    shared_redis_url,
    unique_prefix,
)

REDIS_DB = 10


class Recorder:
    """Collects events and health changes (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.health: list[bool] = []
        self._lock = threading.Lock()

    def event(self, name: str) -> None:
        assert name in EVENTS
        with self._lock:
            self.events.append(name)

    def health_change(self, ok: bool) -> None:
        with self._lock:
            self.health.append(ok)

    def take(self) -> list[str]:
        with self._lock:
            out, self.events = self.events, []
        return out


def _entry(m: int = 6, seed: int = 0, rows: bool = False) -> PotentialEntry:
    rng = np.random.default_rng(seed)
    r = np.arange(3, dtype=np.int64) if rows else None
    return PotentialEntry(rng.standard_normal(m).astype(np.float32), r, {"mode": "global", "eps": 0.1})


def _same(a: PotentialEntry | None, b: PotentialEntry) -> bool:
    return a is not None and a.g.tobytes() == b.g.tobytes() and dict(a.meta) == dict(b.meta)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def shared(rec: Recorder) -> Iterator[tuple[DualCache, redis.Redis, str]]:
    """A DualCache on the machine's Redis (db 10) under a unique prefix, plus a raw client."""
    if not shared_redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (start it with `make redis`)")
    url, prefix = shared_redis_url(REDIS_DB), unique_prefix("duals")
    with (
        DualCache(
            url, prefix=prefix, ttl_seconds=600, events=rec.event, on_health_change=rec.health_change
        ) as cache,
        redis.Redis.from_url(url) as raw,
    ):
        yield cache, raw, prefix
    delete_prefix(url, prefix)


@pytest.fixture
def private() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


# ---------------------------------------------------------------- memory mode
def test_memory_mode_round_trip_and_events(rec: Recorder) -> None:
    with DualCache(None, events=rec.event, on_health_change=rec.health_change) as cache:
        assert cache.backend == "memory"
        assert cache.healthy
        assert cache.check()
        assert cache.get("k") is None
        entry = _entry(rows=True)
        cache.put("k", entry)
        got = cache.get("k")
        assert _same(got, entry)
        assert got is not None
        assert got.rows is not None
        cache.set_latest("fam", "k")
        assert cache.get_latest("fam") == "k"
        assert cache.get_latest("other") is None
        assert rec.take() == ["miss", "put", "hit"]
    assert rec.health == []


def test_memory_mode_lru_evicts_least_recently_used() -> None:
    with DualCache(None, lru_entries=2) as cache:
        cache.put("a", _entry(seed=1))
        cache.put("b", _entry(seed=2))
        assert cache.get("a") is not None  # a is now the most recent
        cache.put("c", _entry(seed=3))
        assert cache.get("b") is None
        assert cache.get("a") is not None
        assert cache.get("c") is not None


def test_lru_expiry_and_byte_budget() -> None:
    lru = TtlLru(10, 100, ttl_seconds=0.05)
    lru.put("a", b"x" * 60)
    lru.put("b", b"y" * 60)  # over the byte budget: a goes
    assert lru.get("a") is None
    assert lru.get("b") == b"y" * 60
    lru.put("huge", b"z" * 101)  # larger than the budget: not kept
    assert lru.get("huge") is None
    time.sleep(0.06)
    assert lru.get("b") is None
    assert len(lru) == 0


def test_delete_prefix_drops_one_pool_only_in_memory() -> None:
    with DualCache(None) as cache:
        for pool in ("a", "ab", "my pool"):
            fam = cache_key(code=1, pool=pool, eps=0.1)
            cache.put(f"{fam}:v1", _entry())
            cache.set_latest(fam, f"{fam}:v1")
        assert cache.delete_prefix("a") == 2
        assert cache.get(cache_key(code=1, pool="a", eps=0.1) + ":v1") is None
        assert cache.get(cache_key(code=1, pool="ab", eps=0.1) + ":v1") is not None
        assert cache.delete_prefix("my pool") == 2


# ---------------------------------------------------------------- shared Redis
def test_redis_round_trip_with_ttl(shared: tuple[DualCache, redis.Redis, str], rec: Recorder) -> None:
    cache, raw, prefix = shared
    assert cache.backend == "redis"
    assert cache.healthy
    entry = _entry(m=384, rows=True)
    assert cache.get("k:v1") is None
    cache.put("k:v1", entry)
    assert _same(cache.get("k:v1"), entry)
    assert 0 < raw.ttl(f"{prefix}pot:k:v1") <= 600
    cache.set_latest("k", "k:v1")
    assert cache.get_latest("k") == "k:v1"
    assert raw.get(f"{prefix}latest:k") == b"k:v1"
    assert 0 < raw.ttl(f"{prefix}latest:k") <= 600
    assert rec.take() == ["miss", "put", "hit"]
    assert rec.health == []


def test_redis_is_the_cache_while_healthy(shared: tuple[DualCache, redis.Redis, str], rec: Recorder) -> None:
    """The LRU is a fallback only: a value gone from Redis is a miss, not a stale local hit."""
    cache, raw, prefix = shared
    cache.put("k", _entry())
    raw.delete(f"{prefix}pot:k")
    assert cache.get("k") is None
    assert rec.take() == ["put", "miss"]


def _with_header(good: bytes, change: dict[str, Any], extra: bytes = b"") -> bytes:
    """``good`` with its g descriptor changed (and ``extra`` array bytes), under a VALID checksum."""
    n = struct.unpack_from("<I", good, 9)[0]
    header = json.loads(good[13 : 13 + n])
    header["arrays"][0].update(change)
    raw = json.dumps(header).encode()
    body = good[:9] + struct.pack("<I", len(raw)) + raw + good[13 + n : -8] + extra
    return body + struct.pack("<Q", xxhash.xxh64_intdigest(body))


def _garbage() -> list[tuple[str, bytes]]:
    good = encode_entry(_entry(m=4))
    return [
        ("random bytes", np.random.default_rng(0).bytes(200)),
        ("truncated", good[:-5]),
        ("wrong version header", good[:7] + (2).to_bytes(2, "little") + good[9:]),
        ("wrong dtype", _with_header(good, {"dtype": "<f8", "length": 32}, bytes(16))),
        ("wrong shape", _with_header(good, {"shape": [2, 2]})),
        ("empty string", b""),
    ]


@pytest.mark.parametrize(("reason", "value"), _garbage(), ids=[r for r, _ in _garbage()])
def test_garbage_in_redis_is_a_counted_miss(
    shared: tuple[DualCache, redis.Redis, str], rec: Recorder, reason: str, value: bytes
) -> None:
    cache, raw, prefix = shared
    raw.set(f"{prefix}pot:k", value)
    assert cache.get("k") is None
    assert rec.take() == ["corrupt", "miss"]
    assert raw.exists(f"{prefix}pot:k") == 0, "the garbage value is deleted"
    assert cache.healthy
    assert rec.health == []
    cache.put("k", _entry())  # and the slot is usable again
    assert cache.get("k") is not None


def test_wrong_redis_type_and_bad_pointer_are_garbage(
    shared: tuple[DualCache, redis.Redis, str], rec: Recorder
) -> None:
    cache, raw, prefix = shared
    raw.hset(f"{prefix}pot:k", "a", "b")
    raw.rpush(f"{prefix}latest:f1", "x")
    raw.set(f"{prefix}latest:f2", b"\xff\xfe")
    assert cache.get("k") is None
    assert cache.get_latest("f1") is None
    assert cache.get_latest("f2") is None
    assert rec.take() == ["corrupt", "miss", "corrupt", "corrupt"]
    assert raw.exists(f"{prefix}pot:k", f"{prefix}latest:f1", f"{prefix}latest:f2") == 0
    assert cache.healthy


def test_delete_prefix_in_redis(shared: tuple[DualCache, redis.Redis, str]) -> None:
    cache, raw, prefix = shared
    for pool in ("a", "ab", "a*"):
        fam = cache_key(code=1, pool=pool, eps=0.1)
        cache.put(f"{fam}:v1", _entry())
        cache.put(f"{fam}:v2", _entry())
        cache.set_latest(fam, f"{fam}:v2")
    assert cache.delete_prefix("a") == 3
    left = sorted(k.decode() for k in raw.scan_iter(match=f"{prefix}*"))
    assert len(left) == 6
    assert not any(":pool=a:" in k for k in left)
    assert cache.delete_prefix("a*") == 3
    assert cache.delete_prefix("nothing") == 0


# ---------------------------------------------------------------- failures
def test_redis_stopped_mid_run_falls_back_then_recovers(private: RedisServer, rec: Recorder) -> None:
    with DualCache(
        private.url,
        prefix="t:",
        retry_interval_seconds=0.3,
        events=rec.event,
        on_health_change=rec.health_change,
    ) as cache:
        before = _entry(seed=1)
        cache.put("before", before)
        assert _same(cache.get("before"), before)
        rec.take()

        private.stop()
        during = _entry(seed=2)
        assert cache.get("before") is None  # Redis held it; the fallback never saw it
        cache.put("during", during)  # skipped Redis: inside the retry interval
        assert _same(cache.get("during"), during)
        cache.set_latest("fam", "during")
        assert cache.get_latest("fam") == "during"
        assert not cache.healthy
        assert rec.health == [False]
        assert rec.take() == ["error", "miss", "put", "fallback_hit"]

        # many threads during the outage: no exception, still exactly one health change
        def hammer() -> None:
            for i in range(20):
                cache.put(f"x{i}", during)
                cache.get(f"x{i}")

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert rec.health == [False]

        private.start()
        time.sleep(0.35)  # past the retry interval
        assert cache.get("during") is None  # Redis again (restarted empty): the fallback is not consulted
        assert cache.healthy
        assert rec.health == [False, True]
        cache.put("after", during)
        assert _same(cache.get("after"), during)
        with redis.Redis.from_url(private.url) as raw:
            assert raw.exists("t:pot:after") == 1


def test_an_outage_logs_one_warning(private: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gotd.cache.duals.cache")
    with DualCache(private.url, retry_interval_seconds=0.0) as cache:  # retry on every call
        private.stop()
        for i in range(10):
            cache.put(f"k{i}", _entry())
            cache.get(f"k{i}")
        private.start()
        cache.get("k0")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [lvl for lvl, _ in levels] == [logging.WARNING, logging.INFO]
    assert "in-process fallback" in levels[0][1]
    assert "127.0.0.1" in levels[0][1]


def test_unhealthy_cache_skips_redis_until_retry_or_check(private: RedisServer, rec: Recorder) -> None:
    with DualCache(private.url, retry_interval_seconds=3600, on_health_change=rec.health_change) as cache:
        private.stop()
        cache.put("k", _entry())
        private.start()
        cache.put("k2", _entry())  # skipped: the retry interval has not passed
        with redis.Redis.from_url(private.url) as raw:
            assert raw.dbsize() == 0
        assert not cache.healthy
        assert cache.check() is True  # an explicit probe recovers at once
        assert rec.health == [False, True]


def test_unreachable_at_start(rec: Recorder) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        with DualCache(
            f"redis://127.0.0.1:{port}/0", events=rec.event, on_health_change=rec.health_change
        ) as cache:
            assert cache.backend == "redis"
            assert not cache.healthy
            cache.put("k", _entry())
            assert cache.get("k") is not None
    assert rec.health == [False]
    assert rec.take() == ["error", "put", "fallback_hit"]


def test_blackholed_redis_times_out_on_read(rec: Recorder) -> None:
    """A peer that accepts TCP but never answers: the socket timeout ends every call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # the kernel completes handshakes; nobody ever reads
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        with DualCache(
            url, timeout_seconds=0.1, events=rec.event, on_health_change=rec.health_change
        ) as cache:
            assert not cache.healthy
    assert rec.health == [False]
    assert rec.take() == ["error"]


def test_slow_redis_returns_a_fallback_miss(private: RedisServer, rec: Recorder) -> None:
    with (
        DualCache(
            private.url, timeout_seconds=0.1, events=rec.event, on_health_change=rec.health_change
        ) as cache,
        redis.Redis.from_url(private.url) as admin,
    ):
        cache.put("k", _entry())
        rec.take()
        admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")  # every command of every client waits
        assert cache.get("k") is None
        assert rec.take() == ["error", "miss"]
        assert not cache.healthy
        assert rec.health == [False]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="URL"):
        DualCache("http://nope")
    with pytest.raises(ValueError, match="ttl"):
        DualCache(None, ttl_seconds=0)
    with DualCache(None) as cache:
        for bad in ("", "a\nb", "x" * 2000):
            with pytest.raises(ValueError, match="cache keys"):
                cache.get(bad)


def test_close_is_idempotent_and_leaves_the_lru(private: RedisServer) -> None:
    cache = DualCache(private.url)
    cache.close()
    cache.close()
    assert cache.backend == "redis"
    cache.put("k", _entry())
    assert cache.get("k") is not None
