"""Security: names cannot reach outside the data dir; malformed bearer tokens never pass.

Every RPC that takes a pool or target-set name is tried with path-traversal and look-alike names; each
is refused with INVALID_ARGUMENT and the filesystem (data dir and its parent) is unchanged afterwards.
Valid but odd names ("a..b", "-rf", "_") stay inside the data dir, FAISS indexes included. With a token
configured, near-miss tokens get UNAUTHENTICATED on every RPC and on reflection; health stays open.
(Token, TLS and mTLS basics are in tests/test_security.py.)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gotd.cache.store.index import ensure_index
from gotd.client.client import Client
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc
from tests.conftest import clustered, vector_records
from tests.reliability.reference import as_ranking, assert_same_ranking, reference_ranking

pytestmark = pytest.mark.reliability

BAD_NAMES = [
    "",
    ".",
    "..",
    "../outside",
    "../../../../etc/passwd",
    "/tmp/gotd-escape",
    "a/../../outside",
    "lmdb/../../outside",
    "..\\..\\outside",
    "%2e%2e%2foutside",
    "\u2025",  # two-dot leader
    "．．／outside",  # fullwidth
    "a\x00b",
    "~",
    ".hidden",
    "name\n",
    " lead",
    "x" * 129,
    "indexes/pool",
]
ODD_BUT_VALID = ["a..b", "-rf", "_", "lmdb", "indexes", "x" * 128]
VEC = clustered(1, seed=3)[0].tolist()
TARGET = pb.TargetSpec(records=pb.TargetRecords(records=[pb.Record(id="t", embedding=VEC)]))
Call = Callable[[pb_grpc.SelectionServiceStub, str], Any]
CALLS: dict[str, Call] = {
    "Ingest": lambda s, n: s.Ingest(
        iter([pb.IngestRequest(pool=n, records=[pb.Record(id="x", embedding=VEC)])]), timeout=30
    ),
    "Select pool": lambda s, n: list(s.Select(pb.SelectRequest(pool=n, target=TARGET, k=1), timeout=30)),
    "Select target_set": lambda s, n: list(
        s.Select(pb.SelectRequest(pool="pool", target=pb.TargetSpec(target_set=n), k=1), timeout=30)
    ),
    "Score pool": lambda s, n: s.Score(pb.ScoreRequest(pool=n, target=TARGET, ids=["c00000"]), timeout=30),
    "Score target_set": lambda s, n: s.Score(
        pb.ScoreRequest(pool="pool", target=pb.TargetSpec(target_set=n), ids=["c00000"]), timeout=30
    ),
    "PutTargetSet": lambda s, n: s.PutTargetSet(
        pb.PutTargetSetRequest(name=n, records=[pb.Record(id="t", embedding=VEC)]), timeout=30
    ),
    "GetTargetSet": lambda s, n: s.GetTargetSet(pb.GetTargetSetRequest(name=n), timeout=30),
    "DeleteTargetSet": lambda s, n: s.DeleteTargetSet(pb.DeleteTargetSetRequest(name=n), timeout=30),
    "GetPool": lambda s, n: s.GetPool(pb.GetPoolRequest(name=n), timeout=30),
    "DeletePool": lambda s, n: s.DeletePool(pb.DeletePoolRequest(name=n), timeout=30),
}


def _tree(root: Path) -> set[str]:
    """Every path under ``root`` (relative), directories included."""
    out = set()
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(str(Path(base, name).relative_to(root)))
    return out


def test_names_cannot_escape_the_data_dir(make_server: Any, tmp_path: Path, figures: dict[str, Any]) -> None:
    """Traversal names are INVALID_ARGUMENT on every RPC that takes a name; the filesystem is unchanged."""
    data = tmp_path / "data"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("keep")
    srv = make_server(data_dir=data)
    with Client(srv.address, timeout=60) as client:
        client.ingest("pool", vector_records(clustered(20, seed=1)))
        client.put_target_set("tset", clustered(2, seed=2).tolist())
    before = _tree(tmp_path)
    refused: dict[str, int] = {}
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.SelectionServiceStub(channel)
        for rpc, call in CALLS.items():
            for name in BAD_NAMES:
                with pytest.raises(grpc.RpcError) as info:
                    call(stub, name)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                    rpc,
                    name,
                    info.value.details(),
                )
                refused[rpc] = refused.get(rpc, 0) + 1
    assert _tree(tmp_path) == before
    assert (tmp_path / "outside" / "keep.txt").read_text() == "keep"
    assert not Path("/tmp/gotd-escape").exists()
    figures.update(names=len(BAD_NAMES), rpcs=len(CALLS), refused=sum(refused.values()))


def test_odd_valid_names_stay_inside(make_server: Any, tmp_path: Path, figures: dict[str, Any]) -> None:
    """Valid names that look like paths or flags work and every file they cause lives in the data dir."""
    data = tmp_path / "data"
    srv = make_server(data_dir=data)
    pool = clustered(20, seed=1)
    targets = clustered(2, seed=2)
    want = reference_ranking(pool, [f"c{i:05d}" for i in range(20)], targets, 3)
    with Client(srv.address, timeout=60) as client:
        for name in ODD_BUT_VALID:
            client.ingest(name, vector_records(pool))
            client.put_target_set(name, targets.tolist())
            assert_same_ranking(as_ranking(client.select(name, name, k=3)[0]), want)
    for name in ODD_BUT_VALID:
        index = ensure_index(srv.running.store, name)
        assert index.ntotal == 20
    outside = _tree(tmp_path) - {"data"} - {p for p in _tree(tmp_path) if p.startswith("data/")}
    assert not outside, outside
    assert all((data / "indexes" / name).is_dir() for name in ODD_BUT_VALID)
    figures.update(names=len(ODD_BUT_VALID))


NEAR_MISSES = [
    "Bearer",
    "Bearer ",
    "bearer s3cret",
    "Bearer  s3cret",
    "Bearer s3cret ",
    "Bearer s3cre",
    "Bearer s3cretX",
    "Bearer S3CRET",
    "Basic s3cret",
    "s3cret",
]


def test_near_miss_tokens_are_unauthenticated(make_server: Any, figures: dict[str, Any]) -> None:
    """Near-miss tokens (case, spacing, prefix, scheme) get UNAUTHENTICATED on every RPC and on
    reflection; the token in another header does not count; health needs no token."""
    srv = make_server(auth_token="s3cret")
    checked = 0
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.SelectionServiceStub(channel)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        metadata_sets = [(("authorization", t),) for t in NEAR_MISSES] + [
            (("x-authorization", "Bearer s3cret"),)
        ]
        for metadata in metadata_sets:
            calls = [functools.partial(c, stub, metadata) for c in _auth_calls()]
            calls.append(functools.partial(_list_services, reflection, metadata))
            for call in calls:
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
                checked += 1
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    figures.update(tokens=len(metadata_sets), calls_refused=checked)


def _list_services(reflection: reflection_pb2_grpc.ServerReflectionStub, metadata: Any) -> Any:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    return list(reflection.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10))


def _auth_calls() -> list[Callable[[pb_grpc.SelectionServiceStub, Any], Any]]:
    return [
        lambda s, md: s.Ingest(iter([pb.IngestRequest(pool="p")]), metadata=md, timeout=10),
        lambda s, md: list(s.Select(pb.SelectRequest(pool="p", k=1), metadata=md, timeout=10)),
        lambda s, md: s.Score(pb.ScoreRequest(pool="p"), metadata=md, timeout=10),
        lambda s, md: s.PutTargetSet(pb.PutTargetSetRequest(name="t"), metadata=md, timeout=10),
        lambda s, md: s.GetTargetSet(pb.GetTargetSetRequest(name="t"), metadata=md, timeout=10),
        lambda s, md: s.DeleteTargetSet(pb.DeleteTargetSetRequest(name="t"), metadata=md, timeout=10),
        lambda s, md: s.GetPool(pb.GetPoolRequest(name="p"), metadata=md, timeout=10),
        lambda s, md: s.ListPools(pb.ListPoolsRequest(), metadata=md, timeout=10),
        lambda s, md: s.DeletePool(pb.DeletePoolRequest(name="p"), metadata=md, timeout=10),
    ]
