"""Every status code of the contract, provoked over a real server (table-driven)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gotd.client.client import Client
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc
from tests.conftest import clustered, vector_records

VEC = clustered(1, seed=5)[0].tolist()


def _select(stub: pb_grpc.SelectionServiceStub, **fields: Any) -> None:
    fields.setdefault("pool", "pool")
    fields.setdefault("k", 5)
    fields.setdefault(
        "target", pb.TargetSpec(records=pb.TargetRecords(records=[pb.Record(id="t", embedding=VEC)]))
    )
    list(stub.Select(pb.SelectRequest(**fields), timeout=60))


def _ingest(stub: pb_grpc.SelectionServiceStub, *batches: pb.IngestRequest) -> None:
    stub.Ingest(iter(batches), timeout=60)


@dataclass
class Case:
    reason: str
    call: Callable[[pb_grpc.SelectionServiceStub], Any]
    want: grpc.StatusCode


CASES = [
    Case("k = 0", lambda s: _select(s, k=0), grpc.StatusCode.INVALID_ARGUMENT),
    Case("k < 0", lambda s: _select(s, k=-3), grpc.StatusCode.INVALID_ARGUMENT),
    Case(
        "eps <= 0",
        lambda s: _select(s, solver=pb.SolverOptions(epsilon=0.0)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case(
        "eps NaN",
        lambda s: _select(s, solver=pb.SolverOptions(epsilon=math.nan)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case("no target", lambda s: _select(s, target=pb.TargetSpec()), grpc.StatusCode.INVALID_ARGUMENT),
    Case("empty pool name", lambda s: _select(s, pool=""), grpc.StatusCode.INVALID_ARGUMENT),
    Case("unknown pool", lambda s: _select(s, pool="nope"), grpc.StatusCode.NOT_FOUND),
    Case(
        "unknown target set",
        lambda s: _select(s, target=pb.TargetSpec(target_set="nope")),
        grpc.StatusCode.NOT_FOUND,
    ),
    Case(
        "target dimension mismatch",
        lambda s: _select(
            s,
            target=pb.TargetSpec(records=pb.TargetRecords(records=[pb.Record(id="t", embedding=[1.0, 0.0])])),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Case(
        "NaN target embedding",
        lambda s: _select(
            s,
            target=pb.TargetSpec(
                records=pb.TargetRecords(records=[pb.Record(id="t", embedding=[math.nan] * 384)])
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case(
        "ingest wrong dimension",
        lambda s: _ingest(
            s, pb.IngestRequest(pool="pool", records=[pb.Record(id="x", embedding=[1.0, 2.0])])
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Case(
        "ingest duplicate ids in a batch",
        lambda s: _ingest(
            s,
            pb.IngestRequest(
                pool="other", records=[pb.Record(id="x", embedding=VEC), pb.Record(id="x", embedding=VEC)]
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case(
        "ingest path traversal in the pool name",
        lambda s: _ingest(s, pb.IngestRequest(pool="../etc", records=[pb.Record(id="x", embedding=VEC)])),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case(
        "ingest empty text",
        lambda s: _ingest(s, pb.IngestRequest(pool="other", records=[pb.Record(id="x", text="   ")])),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case("ingest of nothing", _ingest, grpc.StatusCode.INVALID_ARGUMENT),
    Case(
        "score without ids",
        lambda s: s.Score(pb.ScoreRequest(pool="pool", target=pb.TargetSpec(target_set="x")), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case(
        "get unknown pool",
        lambda s: s.GetPool(pb.GetPoolRequest(name="nope"), timeout=30),
        grpc.StatusCode.NOT_FOUND,
    ),
    Case(
        "delete unknown pool",
        lambda s: s.DeletePool(pb.DeletePoolRequest(name="nope"), timeout=30),
        grpc.StatusCode.NOT_FOUND,
    ),
    Case(
        "delete unknown target set",
        lambda s: s.DeleteTargetSet(pb.DeleteTargetSetRequest(name="nope"), timeout=30),
        grpc.StatusCode.NOT_FOUND,
    ),
    Case(
        "empty target set",
        lambda s: s.PutTargetSet(pb.PutTargetSetRequest(name="empty"), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Case(
        "too many inline targets",
        lambda s: s.PutTargetSet(
            pb.PutTargetSetRequest(
                name="big", records=[pb.Record(id=str(i), embedding=VEC) for i in range(30)]
            ),
            timeout=30,
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
]


@pytest.fixture(scope="module")
def stub_server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Any:
    from gotd.lab.demo import BackgroundServer

    srv = BackgroundServer(
        embedder=embedder,
        listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("codes"),
        max_inline_targets=20,
    )
    with Client(srv.address) as client:
        client.ingest("pool", vector_records(clustered(40, seed=4)))
    yield srv
    srv.stop()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.reason)
def test_status_code(case: Case, stub_server: Any) -> None:
    with grpc.insecure_channel(stub_server.address) as channel:
        stub = pb_grpc.SelectionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            case.call(stub)
        assert info.value.code() == case.want, info.value.details()
        assert info.value.details(), "every error carries a message"
        # The server is still healthy after bad input.
        assert stub.GetPool(pb.GetPoolRequest(name="pool"), timeout=30).info.count == 40


def test_unavailable_while_shutting_down(make_server: Any) -> None:
    srv = make_server()
    srv.running.servicer.shutting_down = True
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.SelectionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListPools(pb.ListPoolsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
