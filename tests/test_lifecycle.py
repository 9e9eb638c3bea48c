"""Health, reflection, metrics, deadlines, cancellation and concurrency limits of a real server."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gotd.client.client import Client, target_spec
from gotd.client.types import SelectProgress, SolverOptions
from gotd.server.service.app import CACHE_HEALTH
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc
from tests.conftest import clustered, vector_records

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)


def test_health_reflection_and_metrics(make_server: Any) -> None:
    srv = make_server(metrics_port=0)
    for name in ("", "gotd.v1.SelectionService", CACHE_HEALTH):
        assert _health(srv.address, name) == SERVING
    with grpc.insecure_channel(srv.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in response.list_services_response.service}
    assert "gotd.v1.SelectionService" in names
    assert "grpc.health.v1.Health" in names
    with Client(srv.address) as client:
        client.ingest("pool", vector_records(clustered(30, seed=1)))
        client.select("pool", clustered(3, seed=2).tolist(), k=5)
        with pytest.raises(grpc.RpcError):
            client.pool("absent")  # a domain error: counted under its status code
        with pytest.raises(grpc.RpcError):
            list(client.select_stream("absent", clustered(3, seed=2).tolist(), k=5))
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{srv.running.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    assert 'gotd_rpcs_total{code="OK",method="Select"} 1.0' in body
    assert 'gotd_rpcs_total{code="NOT_FOUND",method="GetPool"} 1.0' in body
    assert 'gotd_rpcs_total{code="NOT_FOUND",method="Select"} 1.0' in body
    assert 'gotd_pool_candidates{pool="pool"} 30.0' in body
    assert "gotd_solve_iterations_count 1.0" in body


def test_cache_health_goes_not_serving_while_overall_stays_serving(make_server: Any) -> None:
    from tests.redis_fixtures import RedisServer

    with RedisServer() as private:
        srv = make_server(redis_url=private.url, redis_timeout_seconds=0.2)
        assert _health(srv.address, CACHE_HEALTH) == SERVING
        private.stop()
        with Client(srv.address) as client:
            client.ingest("pool", vector_records(clustered(30, seed=1)))
            client.select("pool", clustered(3, seed=2).tolist(), k=5)
        deadline = time.monotonic() + 10
        while _health(srv.address, CACHE_HEALTH) != NOT_SERVING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _health(srv.address, CACHE_HEALTH) == NOT_SERVING
        assert _health(srv.address, "") == SERVING


def _big_pool(client: Client) -> None:
    client.ingest("big", vector_records(clustered(6000, seed=3)), batch_size=2000)


def test_deadline_stops_the_work(make_server: Any) -> None:
    srv = make_server()
    with Client(srv.address) as client:
        _big_pool(client)
        blocks_before = srv.running.metrics.blocks_scored._value.get()
        with pytest.raises(grpc.RpcError) as info:
            client.select(
                "big", clustered(400, seed=4).tolist(), k=10, eps=0.01, tol=1e-9, max_iter=100000, timeout=1.5
            )
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The worker stops at its next block: no scoring pass ran for the abandoned solve.
        time.sleep(1.0)
        assert srv.running.metrics.blocks_scored._value.get() == blocks_before
        assert client.pool("big").count == 6000


def test_cancel_mid_stream_stops_the_work(make_server: Any) -> None:
    srv = make_server()
    with Client(srv.address) as client:
        _big_pool(client)
        request = pb.SelectRequest(
            pool="big",
            target=target_spec(clustered(400, seed=4).tolist()),
            k=10,
            solver=SolverOptions(eps=0.01, tol=1e-9, max_iter=100000).to_pb(),
        )
        with grpc.insecure_channel(srv.address) as channel:
            stream = pb_grpc.SelectionServiceStub(channel).Select(request, timeout=120)
            first = next(stream)
            assert first.WhichOneof("message") == "progress"
            stream.cancel()
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            assert info.value.code() == grpc.StatusCode.CANCELLED
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _busy(srv):
            time.sleep(0.1)
        assert not _busy(srv), "the worker kept solving after the cancel"


def _busy(srv: Any) -> bool:
    return bool(srv.running.metrics.in_flight._value.get() > 0)


def test_progress_is_streamed_before_the_ranking(make_server: Any) -> None:
    srv = make_server()
    with Client(srv.address) as client:
        client.ingest("pool", vector_records(clustered(300, seed=1)))
        events = list(client.select_stream("pool", clustered(5, seed=2).tolist(), k=3))
    stages = [e.stage for e in events if isinstance(e, SelectProgress)]
    assert "load" in stages
    assert "solve" in stages
    assert "score" in stages
    first_ranked = next(i for i, e in enumerate(events) if not isinstance(e, SelectProgress))
    assert all(isinstance(e, SelectProgress) for e in events[:first_ranked])
