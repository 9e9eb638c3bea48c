"""Redis behind a password (``requirepass``): the dual cache uses an AUTH URL end to end (issue 18).

Redis is inside gotd's trust boundary (README, Deployment): it should require a password. The URL's
password reaches redis-py, never a log line or a configuration error.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gotd.client.client import Client
from gotd.server.service.app import CACHE_HEALTH
from gotd.server.service.config import ConfigError, load_settings
from tests.conftest import clustered, vector_records
from tests.redis_fixtures import RedisServer

PASSWORD = "s3cret-redis-pw"


def _cache_health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=CACHE_HEALTH)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)


def _ranking(client: Client) -> tuple[list[tuple[str, float]], bool]:
    ranked, summary = client.select("pool", clustered(10, seed=2, centers=2).tolist(), k=15)
    return [(c.id, c.score) for c in ranked], summary.cache_hit


def test_auth_url_end_to_end_and_the_password_is_never_logged(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(password=PASSWORD) as private, caplog.at_level(logging.DEBUG):
        assert PASSWORD in private.url
        srv = make_server(redis_url=private.url, redis_prefix="auth:")
        assert _cache_health(srv.address) == health_pb2.HealthCheckResponse.SERVING
        with Client(srv.address, timeout=120) as client:
            client.ingest("pool", vector_records(clustered(300, seed=1)))
            first, hit = _ranking(client)
            assert not hit
            assert _ranking(client) == (first, True)
        with redis.Redis.from_url(private.url) as r:
            assert list(r.scan_iter(match="auth:*")), "the potential was not written to the private Redis"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=private.host, port=private.port).set("x", "1")  # no password: refused

        wrong = make_server(redis_url=private.url.replace(PASSWORD, "wrong"), redis_prefix="auth2:")
        assert _cache_health(wrong.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(wrong.address, timeout=120) as client:
            client.ingest("pool", vector_records(clustered(300, seed=1)))
            assert _ranking(client)[0] == first  # a refused cache is a miss, never an error
    assert PASSWORD not in caplog.text


def test_a_bad_redis_url_error_hides_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(redis_url=f"http://:{PASSWORD}@127.0.0.1:6379/0")
    assert PASSWORD not in str(err.value)
    assert "***@127.0.0.1" in str(err.value)
