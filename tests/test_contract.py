"""The wire contract itself: generated modules import, every RPC is on the stub, enums are well formed."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor

from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc

RPCS = {
    "Ingest": (True, False),
    "Select": (False, True),
    "Score": (False, False),
    "PutTargetSet": (False, False),
    "GetTargetSet": (False, False),
    "DeleteTargetSet": (False, False),
    "GetPool": (False, False),
    "ListPools": (False, False),
    "DeletePool": (False, False),
    "PutIdSet": (False, False),
    "GetIdSet": (False, False),
    "DeleteIdSet": (False, False),
    "ListIdSets": (False, False),
    "DeleteRecords": (False, False),
}


def test_service_has_every_rpc_with_its_streaming_shape() -> None:
    service = pb.DESCRIPTOR.services_by_name["SelectionService"]
    assert service.full_name == "gotd.v1.SelectionService"
    assert {m.name for m in service.methods} == set(RPCS)
    for method in service.methods:
        client_streaming, server_streaming = RPCS[method.name]
        assert method.client_streaming == client_streaming, method.name
        assert method.server_streaming == server_streaming, method.name
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


def test_stub_exposes_every_rpc() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = pb_grpc.SelectionServiceStub(channel)
        for name in RPCS:
            assert callable(getattr(stub, name)), name
    servicer = pb_grpc.SelectionServiceServicer()
    for name in RPCS:
        assert callable(getattr(servicer, name)), name


@pytest.mark.parametrize("enum", list(pb.DESCRIPTOR.enum_types_by_name.values()), ids=lambda e: e.name)
def test_enums_start_with_unspecified_zero(enum: descriptor.EnumDescriptor) -> None:
    zero = enum.values_by_number[0]
    assert zero.name.endswith("_UNSPECIFIED")
    prefix = zero.name.removesuffix("UNSPECIFIED")
    assert all(v.name.startswith(prefix) for v in enum.values)


def test_messages_round_trip() -> None:
    request = pb.SelectRequest(
        pool="p",
        target=pb.TargetSpec(records=pb.TargetRecords(records=[pb.Record(id="a", embedding=[0.5, 0.25])])),
        k=3,
        mode=pb.SELECTION_MODE_GLOBAL,
        solver=pb.SolverOptions(epsilon=0.05),
    )
    decoded = pb.SelectRequest.FromString(request.SerializeToString())
    assert decoded == request
    assert decoded.solver.HasField("epsilon")
    assert not decoded.solver.HasField("tolerance")
    assert decoded.target.WhichOneof("source") == "records"
    assert list(decoded.target.records.records[0].embedding) == [0.5, 0.25]
