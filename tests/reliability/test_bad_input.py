"""Bad input, generated with hypothesis, for every RPC: only documented status codes, server healthy after.

Requests mix valid and broken parts: empty and unknown names, path-like and unicode names, NaN/inf/zero/huge
embeddings, wrong dimensions, duplicate ids, over-long texts, malformed meta JSON, k <= 0 and k > pool,
eps <= 0 / NaN / inf, unknown mode numbers, and messages over the server's size limit. Every answer must be
OK or one of INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED; never UNKNOWN or
INTERNAL. ``GOTD_FUZZ_EXAMPLES`` sets the examples per RPC (``make reliability`` runs more).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc
from tests.conftest import DIM, clustered, vector_records
from tests.reliability.support import metric_value, wait_until

pytestmark = pytest.mark.reliability

EXAMPLES = int(os.environ.get("GOTD_FUZZ_EXAMPLES", "40"))
MAX_MESSAGE = 2 * 1024 * 1024
MAX_TARGETS = 64
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
CODES: dict[str, Counter[str]] = {}

# -- strategies ------------------------------------------------------------------------------------
TRICKY_NAMES = [
    "base",
    "tset",
    "other",
    "",
    ".",
    "..",
    "../base",
    "a/b",
    "/etc",
    "..\\x",
    "x" * 200,
    "ünï",
    "a\x00b",
]
names = st.one_of(st.sampled_from(TRICKY_NAMES), st.text(max_size=24))
ids = st.one_of(
    st.sampled_from(["", "c00001", "c00002", "dup", "dup", "x" * 600, "é\u200b", "\x00"]),
    st.text(max_size=24),
)
float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
KINDS = ["ok", "ok", "nan", "inf", "zeros", "huge", "tiny", "short", "long", "empty", "listed"]


@st.composite
def embeddings(draw: st.DrawFn) -> list[float]:
    kind = draw(st.sampled_from(KINDS))
    if kind == "listed":
        return draw(st.lists(float32, max_size=8))
    if kind == "empty":
        return []
    size = {"short": draw(st.integers(1, DIM - 1)), "long": draw(st.integers(DIM + 1, 2 * DIM))}.get(
        kind, DIM
    )
    v = clustered(1, seed=draw(st.integers(0, 3)), dim=size)[0]
    i = draw(st.integers(0, size - 1))
    if kind == "nan":
        v[i] = np.nan
    elif kind == "inf":
        v[i] = -np.inf if draw(st.booleans()) else np.inf
    elif kind == "zeros":
        v[:] = 0.0
    elif kind == "huge":
        v *= np.float32(3e38)
    elif kind == "tiny":
        v *= np.float32(1e-44)
    return [float(x) for x in v]


@st.composite
def records(draw: st.DrawFn) -> pb.Record:
    message = pb.Record(id=draw(ids), domain=draw(st.text(max_size=8)))
    text = draw(st.one_of(st.none(), st.text(max_size=40), st.sampled_from([" ", "", "x" * 70_000])))
    if text is not None:
        message.text = text
    if text is None or draw(st.booleans()):
        message.embedding.extend(draw(embeddings()))
    meta = ["", "{", "[1]", '{"a": 1}', "null", '"s"', "[" * 5000, '{"k": NaN}']
    message.meta_json = draw(st.one_of(st.sampled_from(meta), st.text(max_size=12)))
    return message


def vector_records_pb(n: int, seed: int) -> list[pb.Record]:
    return [pb.Record(id=f"t{i}", embedding=v) for i, v in enumerate(clustered(n, seed=seed))]


record_lists = st.one_of(
    st.lists(records(), max_size=4),
    st.builds(
        lambda n: [pb.Record(id=f"t{i}", embedding=clustered(1, seed=i)[0]) for i in range(n)],
        st.integers(60, 70),
    ),
)
huge_records = st.just([pb.Record(id="big", embedding=[0.5] * (MAX_MESSAGE // 4 + 1))])
valid_targets = st.builds(
    lambda n, seed: pb.TargetSpec(records=pb.TargetRecords(records=vector_records_pb(n, seed))),
    st.integers(1, 8),
    st.integers(0, 3),
)
targets = st.one_of(
    st.just(pb.TargetSpec(target_set="tset")),
    valid_targets,
    st.just(pb.TargetSpec()),
    st.builds(lambda n: pb.TargetSpec(target_set=n), names),
    st.builds(
        lambda rs: pb.TargetSpec(records=pb.TargetRecords(records=rs)), st.one_of(record_lists, huge_records)
    ),
)
EPS = [0.0, -0.1, float("nan"), float("inf"), 1e-300, 1e300, 0.1, 0.05, 5e-324]


@st.composite
def solver_options(draw: st.DrawFn) -> pb.SolverOptions:
    options = pb.SolverOptions()
    if draw(st.booleans()):
        options.epsilon = draw(st.one_of(st.sampled_from(EPS), st.floats(allow_nan=True)))
    if draw(st.booleans()):
        options.tolerance = draw(st.one_of(st.sampled_from(EPS), st.floats(allow_nan=True)))
    if draw(st.booleans()):
        options.max_iterations = draw(st.integers(0, 2000))
    if draw(st.booleans()):
        options.summary_size = draw(st.one_of(st.integers(0, 100), st.just(2**32 - 1)))
    if draw(st.booleans()):
        options.paper_domains = draw(st.one_of(st.integers(0, 5), st.just(2**32 - 1)))
    if draw(st.booleans()):
        options.cost = draw(st.integers(0, 5))  # type: ignore[assignment]  # 3..5: unknown values
    if draw(st.booleans()):
        options.embedding_weight = draw(
            st.one_of(st.sampled_from([*EPS, 1.0, 1.5]), st.floats(allow_nan=True))
        )
    if draw(st.booleans()):
        options.relative_epsilon = draw(st.one_of(st.sampled_from(EPS), st.floats(allow_nan=True)))
    return options


BAD_COSINES = [0.0, -1.0, 1.5, float("nan"), float("inf")]
ks = st.one_of(st.integers(-3, 60), st.integers(1, 10), st.sampled_from([2**63 - 1, -(2**63), 10**9]))
modes = st.integers(0, 6)
BASE_IDS = [f"c{i:05d}" for i in range(40)]


@st.composite
def sane_solver(draw: st.DrawFn) -> pb.SolverOptions:
    """Valid solver options (possibly far from the defaults)."""
    options = pb.SolverOptions()
    if draw(st.booleans()):
        options.epsilon = draw(st.floats(0.01, 2.0))
    if draw(st.booleans()):
        options.tolerance = draw(st.floats(1e-6, 0.5))
    if draw(st.booleans()):
        options.max_iterations = draw(st.integers(1, 300))
    if draw(st.booleans()):
        options.summary_size = draw(st.integers(2, 64))
    if draw(st.booleans()):
        options.paper_domains = draw(st.integers(1, 3))
    if draw(st.booleans()):  # fused on a pool of embeddings only: FAILED_PRECONDITION, a documented code
        options.cost = draw(st.integers(0, 2))  # type: ignore[assignment]
    if draw(st.booleans()):
        options.embedding_weight = draw(st.floats(0.0, 1.0))
    if not options.HasField("epsilon") and draw(st.booleans()):
        options.relative_epsilon = draw(st.floats(0.01, 0.5))
    return options


def _broken(draw: st.DrawFn, fields: tuple[str, ...]) -> Callable[[str, Any, Any], Any]:
    """Most requests break one to three fields and keep the others valid, so they reach deep code."""
    broken = draw(st.sets(st.sampled_from(fields), max_size=3))

    def pick(name: str, valid: Any, bad: Any) -> Any:
        return draw(bad if name in broken else valid)

    return pick


good_targets = st.one_of(st.just(pb.TargetSpec(target_set="tset")), valid_targets)


@st.composite
def select_requests(draw: st.DrawFn) -> pb.SelectRequest:
    pick = _broken(
        draw, ("pool", "target", "k", "mode", "solver", "exclude", "domains", "batch_size", "near_dup")
    )
    return pb.SelectRequest(
        pool=pick("pool", st.just("base"), names),
        target=pick("target", good_targets, targets),
        k=pick("k", st.integers(1, 60), ks),
        mode=pick("mode", st.integers(0, 4), modes),
        solver=pick("solver", sane_solver(), solver_options()),
        exclude_ids=pick(
            "exclude", st.lists(st.sampled_from(BASE_IDS), max_size=5), st.lists(ids, max_size=3)
        ),
        domains=pick(
            "domains", st.lists(st.sampled_from(["a", "b"]), max_size=2), st.lists(names, max_size=3)
        ),
        batch_size=pick("batch_size", st.integers(0, 50), st.integers(0, 2**32 - 1)),
        include_metadata=draw(st.booleans()),
        near_duplicate_cosine=pick(
            "near_dup",
            st.one_of(st.none(), st.floats(0.5, 1.0)),
            st.one_of(
                st.sampled_from([0.0, -1.0, 1.5, float("nan"), float("inf")]), st.floats(allow_nan=True)
            ),
        ),
    )


@st.composite
def score_requests(draw: st.DrawFn) -> pb.ScoreRequest:
    pick = _broken(draw, ("pool", "target", "ids", "mode", "solver"))
    return pb.ScoreRequest(
        pool=pick("pool", st.just("base"), names),
        target=pick("target", good_targets, targets),
        ids=pick(
            "ids", st.lists(st.sampled_from(BASE_IDS), min_size=1, max_size=6), st.lists(ids, max_size=4)
        ),
        mode=pick("mode", st.integers(0, 4), modes),
        solver=pick("solver", sane_solver(), solver_options()),
    )


@st.composite
def ingest_streams(draw: st.DrawFn) -> list[pb.IngestRequest]:
    pick = _broken(draw, ("pool", "records", "later_pools", "count"))
    pool = pick("pool", st.sampled_from(["base", "fresh"]), names)
    out = []
    for b in range(pick("count", st.integers(1, 3), st.integers(0, 4))):
        name = pool if b == 0 else pick("later_pools", st.sampled_from([pool, ""]), names)
        seed = draw(st.integers(0, 10**6))
        valid = st.just(
            [pb.Record(id=f"f{seed}-{i}", embedding=v) for i, v in enumerate(clustered(3, seed=seed))]
        )
        out.append(
            pb.IngestRequest(pool=name, records=pick("records", valid, st.one_of(record_lists, huge_records)))
        )
    return out


# -- server and calls ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[BackgroundServer]:
    srv = BackgroundServer(
        embedder=embedder,
        listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("fuzz"),
        max_message_bytes=MAX_MESSAGE,
        max_inline_targets=MAX_TARGETS,
    )
    with Client(srv.address, timeout=60) as client:
        # texts and embeddings: the pool and "tset" have n-gram sketches, so the fused cost is fuzzed too
        base = vector_records(clustered(40, seed=4), domains=["a", "b"] * 20)
        for i, record in enumerate(base):
            record["text"] = f"candidate {i} about topic {i % 4} and word {i % 7}"
        client.ingest("base", base)
        tset = [
            {"id": f"t{j}", "embedding": v, "text": f"target about topic {j % 4}"}
            for j, v in enumerate(clustered(5, seed=6).tolist())
        ]
        client.put_target_set("tset", tset)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(fuzz_server: BackgroundServer) -> Iterator[pb_grpc.SelectionServiceStub]:
    options = [("grpc.max_send_message_length", 4 * MAX_MESSAGE)]
    with grpc.insecure_channel(fuzz_server.address, options=options) as channel:
        yield pb_grpc.SelectionServiceStub(channel)


def _check(rpc: str, call: Callable[[], Any]) -> None:
    code, details = grpc.StatusCode.OK, ""
    try:
        call()
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    CODES.setdefault(rpc, Counter())[code.name] += 1
    assert code in ALLOWED, f"{rpc}: {code.name}: {details}"


@pytest.fixture(autouse=True)
def _healthy_after(
    request: pytest.FixtureRequest, fuzz_server: BackgroundServer, figures: dict[str, Any]
) -> Iterator[None]:
    yield
    rpc = request.node.name.removeprefix("test_fuzz_").split("[")[0]
    figures["examples"] = EXAMPLES
    figures["codes"] = dict(CODES.get(rpc, Counter()))
    running = fuzz_server.running
    assert wait_until(lambda: metric_value(running.metrics.in_flight) == 0, 30)
    with grpc.insecure_channel(fuzz_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with Client(fuzz_server.address, timeout=60) as client:
        ranked, _ = client.select("base", "tset", k=3)
    assert len(ranked) == 3


# -- one property per RPC ------------------------------------------------------------------------
@FUZZ
@given(messages=ingest_streams())
def test_fuzz_ingest(stub: pb_grpc.SelectionServiceStub, messages: list[pb.IngestRequest]) -> None:
    """Ingest: any stream of batches (bad names, records, embeddings, sizes) gets a documented code."""
    _check("ingest", lambda: stub.Ingest(iter(messages), timeout=30))


@FUZZ
@given(request=select_requests())
def test_fuzz_select(stub: pb_grpc.SelectionServiceStub, request: pb.SelectRequest) -> None:
    """Select: any pool, target, k, mode, solver options, exclusions, domains, batch size."""
    _check("select", lambda: list(stub.Select(request, timeout=30)))


@FUZZ
@given(request=score_requests())
def test_fuzz_score(stub: pb_grpc.SelectionServiceStub, request: pb.ScoreRequest) -> None:
    """Score: any pool, target, ids (unknown, duplicated, empty), mode and solver options."""
    _check("score", lambda: stub.Score(request, timeout=30))


@FUZZ
@given(
    name=names, rs=st.one_of(record_lists, huge_records, valid_targets.map(lambda t: list(t.records.records)))
)
def test_fuzz_put_target_set(stub: pb_grpc.SelectionServiceStub, name: str, rs: list[pb.Record]) -> None:
    """PutTargetSet: any name and records (too many, too big, bad embeddings, duplicate ids)."""
    name = "tset2" if name == "tset" else name
    _check(
        "put_target_set", lambda: stub.PutTargetSet(pb.PutTargetSetRequest(name=name, records=rs), timeout=30)
    )


@FUZZ
@given(
    name=names,
    which=st.sampled_from(["GetTargetSet", "DeleteTargetSet", "GetPool", "DeletePool", "ListPools"]),
)
def test_fuzz_by_name(stub: pb_grpc.SelectionServiceStub, name: str, which: str) -> None:
    """Get/Delete of pools and target sets, and ListPools, with any name."""
    if which.startswith("Delete") and name in {"base", "tset"}:
        name = "other"
    calls: dict[str, Callable[[], Any]] = {
        "GetTargetSet": lambda: stub.GetTargetSet(pb.GetTargetSetRequest(name=name), timeout=30),
        "DeleteTargetSet": lambda: stub.DeleteTargetSet(pb.DeleteTargetSetRequest(name=name), timeout=30),
        "GetPool": lambda: stub.GetPool(pb.GetPoolRequest(name=name), timeout=30),
        "DeletePool": lambda: stub.DeletePool(pb.DeletePoolRequest(name=name), timeout=30),
        "ListPools": lambda: stub.ListPools(pb.ListPoolsRequest(), timeout=30),
    }
    _check("by_name", calls[which])
