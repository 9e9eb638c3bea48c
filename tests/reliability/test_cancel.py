"""Deadlines and cancellation during a long Select stop the server's work at the next block.

The pool (32,768 candidates) against a target set of 16,384 gives a scoring pass of 32 row blocks. The
client cancels, or its deadline passes, once scoring has begun; the suite then reads the server's
counters: row blocks scored after the cancel (at most the one in progress), the in-flight gauge back to
0, no worker thread left in gotd code, no LMDB read transaction open, no thread leaked. A cancel during
an exact solve stops it at the next row block of the current Sinkhorn pass (the solver checks before
every block): no score block and no finished solve afterwards, idle well within one pass's time.
Seconds (cancel → idle) are measured and reported, never asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc
from tests.conftest import clustered
from tests.reliability.support import busy_workers, histogram_count, metric_value, open_read_txns, wait_until

pytestmark = pytest.mark.reliability

N, M, M_SOLVE = 32_768, 16_384, 2_048
SCORE = pb.STAGE_SCORE
SOLVE = pb.STAGE_SOLVE


def _records(x: np.ndarray, prefix: str, start: int = 0) -> list[pb.Record]:
    return [pb.Record(id=f"{prefix}{start + i:05d}", embedding=v) for i, v in enumerate(x)]


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[BackgroundServer]:
    srv = BackgroundServer(
        embedder=embedder, listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("cancel")
    )
    with grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.SelectionServiceStub(ch)
        x = clustered(N, seed=21)
        batches = (
            pb.IngestRequest(pool="big", records=_records(x[i : i + 4096], "c", i)) for i in range(0, N, 4096)
        )
        stub.Ingest(batches, timeout=300)
        y = clustered(M, seed=22, centers=4)
        stub.PutTargetSet(pb.PutTargetSetRequest(name="wide", records=_records(y, "t")), timeout=300)
        small = _records(y[:M_SOLVE], "t")
        stub.PutTargetSet(pb.PutTargetSetRequest(name="narrow", records=small), timeout=300)
    yield srv
    srv.stop()


def _request(target: str, mode: Any, **solver: Any) -> pb.SelectRequest:
    return pb.SelectRequest(
        pool="big",
        target=pb.TargetSpec(target_set=target),
        k=10,
        mode=mode,
        solver=pb.SolverOptions(**solver),
    )


GLOBAL = _request("wide", pb.SELECTION_MODE_GLOBAL, summary_size=256)


class Probe:
    """Counters of one server and how long it takes to become idle after a stop."""

    def __init__(self, srv: BackgroundServer) -> None:
        self.srv = srv
        self.metrics = srv.running.metrics
        self.threads = {t.name for t in threading.enumerate()}

    def blocks(self) -> float:
        return metric_value(self.metrics.blocks_scored)

    def solves(self) -> float:
        return histogram_count(self.metrics.solve_iterations)

    def idle(self) -> bool:
        return (
            metric_value(self.metrics.in_flight) == 0
            and not busy_workers()
            and open_read_txns(self.srv.running.store) == 0
        )

    def wait_idle(self, since: float) -> float:
        assert wait_until(self.idle, 120, 0.005), f"still busy: {busy_workers()}"
        return time.perf_counter() - since

    def leaked_threads(self) -> set[str]:
        now = {t.name for t in threading.enumerate()}
        return {name for name in now - self.threads if not name.startswith("gotd-worker")}


def _stream_until(
    stub: pb_grpc.SelectionServiceStub, request: pb.SelectRequest, stage: int, count: int
) -> Any:
    """Open a Select stream and read until ``count`` progress messages of ``stage`` arrived."""
    stream = stub.Select(request, timeout=600)
    seen = 0
    times = []
    for message in stream:
        if message.WhichOneof("message") == "progress" and message.progress.stage == stage:
            seen += 1
            times.append((time.perf_counter(), message.progress.done, message.progress.total))
            if seen >= count:
                return stream, times
    raise AssertionError("the stream ended before the stage was reached")


def test_cancel_during_scoring_stops_at_the_next_block(
    long_server: BackgroundServer, figures: dict[str, Any]
) -> None:
    """Cancel after the first scored block: at most one more block is scored, then everything is idle."""
    probe = Probe(long_server)
    with grpc.insecure_channel(long_server.address) as channel:
        stub = pb_grpc.SelectionServiceStub(channel)
        started = time.perf_counter()
        stream, times = _stream_until(stub, GLOBAL, SCORE, 2)
        total_blocks = -(-times[0][2] // times[0][1])
        at_cancel = probe.blocks()
        cancelled = time.perf_counter()
        stream.cancel()
        idle_s = probe.wait_idle(cancelled)
    after = probe.blocks() - at_cancel
    figures.update(
        pass_blocks=total_blocks,
        first_score_s=round(times[0][0] - started, 2),
        block_s=round(times[1][0] - times[0][0], 3),
        blocks_after_cancel=after,
        cancel_to_idle_s=round(idle_s, 3),
    )
    assert after <= 1
    assert probe.blocks() - at_cancel < total_blocks - 2  # the pass was abandoned, not finished
    assert not probe.leaked_threads()
    long_server.running.store.get_pool("big")  # the store is still usable


def test_deadline_during_scoring_stops_at_the_next_block(
    long_server: BackgroundServer, figures: dict[str, Any]
) -> None:
    """A deadline that expires during scoring: DEADLINE_EXCEEDED, at most one more block, then idle."""
    probe = Probe(long_server)
    with grpc.insecure_channel(long_server.address) as channel:
        stub = pb_grpc.SelectionServiceStub(channel)
        started = time.perf_counter()  # a dry run measures when scoring starts and how long a block takes
        stream, times = _stream_until(stub, GLOBAL, SCORE, 2)
        stream.cancel()
        probe.wait_idle(time.perf_counter())
        deadline = (times[0][0] - started) + 3 * (times[1][0] - times[0][0])
        blocks_before = probe.blocks()
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Select(GLOBAL, timeout=deadline))
        at_deadline = probe.blocks()
        expired = time.perf_counter()
        idle_s = probe.wait_idle(expired)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = probe.blocks() - at_deadline
    figures.update(
        deadline_s=round(deadline, 2),
        blocks_before_deadline=probe.blocks() - blocks_before - after,
        blocks_after_deadline=after,
        deadline_to_idle_s=round(idle_s, 3),
    )
    assert after <= 1
    assert not probe.leaked_threads()


def test_cancel_during_an_exact_solve_stops_at_the_next_block(
    long_server: BackgroundServer, figures: dict[str, Any]
) -> None:
    """Cancel during the Sinkhorn passes of an exact solve: no block is scored and no solve finishes."""
    probe = Probe(long_server)
    request = _request(
        "narrow", pb.SELECTION_MODE_EXACT, epsilon=0.01, tolerance=1e-9, max_iterations=100_000
    )
    blocks, solves = probe.blocks(), probe.solves()
    with grpc.insecure_channel(long_server.address) as channel:
        stream, times = _stream_until(pb_grpc.SelectionServiceStub(channel), request, SOLVE, 3)
        cancelled = time.perf_counter()
        stream.cancel()
        idle_s = probe.wait_idle(cancelled)
    figures.update(
        pass_s=round(times[2][0] - times[1][0], 3), cancel_to_idle_s=round(idle_s, 3), passes_seen=len(times)
    )
    assert probe.blocks() == blocks
    assert probe.solves() == solves
    assert not probe.leaked_threads()
    with Client(long_server.address, timeout=120) as client:  # and the server still answers
        assert client.pool("big").count == N
