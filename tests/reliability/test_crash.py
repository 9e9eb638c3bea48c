"""Crash during ingest: a real ``gotd serve`` is SIGKILLed at a random moment while a client streams records.

The client sends records with precomputed embeddings as Ingest calls of 4 batches of 500 records; a call
is acknowledged when its response arrives. The pool starts with one call's records and a FAISS index
built from them. After the kill, on the same data dir: every acknowledged record is present with its
vector, the interrupted call left whole batches only (a prefix of its batches), nothing else is there,
the store opens (stale readers cleared) and the index is extended or rebuilt; a restarted server
answers GetPool and Select, takes the rest of the records (re-sent, idempotent) and stops cleanly.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.index import IndexManager, ensure_index
from gotd.client.client import Client
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc
from tests.conftest import DIM, clustered
from tests.reliability.reference import as_ranking, assert_same_ranking, reference_ranking
from tests.reliability.support import ServeProcess, wait_until

pytestmark = pytest.mark.reliability

POOL = "crash"
BATCH = 500
BATCHES_PER_CALL = 4
PER_CALL = BATCH * BATCHES_PER_CALL
TOTAL = 50_000
VECTORS = clustered(TOTAL, seed=77)


def _id(i: int) -> str:
    return f"r{i:06d}"


def _call(c: int) -> list[pb.IngestRequest]:
    """The batches of Ingest call ``c`` (records ``c * PER_CALL`` onwards)."""
    out = []
    for b in range(BATCHES_PER_CALL):
        start = c * PER_CALL + b * BATCH
        rows = range(start, start + BATCH)
        out.append(
            pb.IngestRequest(pool=POOL, records=[pb.Record(id=_id(i), embedding=VECTORS[i]) for i in rows])
        )
    return out


def _batch_rows(c: int, b: int) -> range:
    start = c * PER_CALL + b * BATCH
    return range(start, start + BATCH)


class Ingester(threading.Thread):
    """Sends calls 1.. in order on one channel; records which were acknowledged."""

    def __init__(self, address: str, calls: list[list[pb.IngestRequest]]) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.calls = calls
        self.acked: list[int] = [0]  # call 0 was written before the server started
        self.ack_times: list[float] = []
        self.error = ""

    def run(self) -> None:
        with grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = pb_grpc.SelectionServiceStub(ch)
            for c in range(1, len(self.calls)):
                try:
                    stub.Ingest(iter(self.calls[c]), timeout=300)
                except grpc.RpcError as err:
                    self.error = err.code().name
                    return
                self.acked.append(c)
                self.ack_times.append(time.monotonic())


def _seed_store(data: Path, model: str, calls: list[list[pb.IngestRequest]]) -> None:
    """Call 0 written directly, with a FAISS index of it (the index to open or extend after the crash)."""
    rows = range(PER_CALL)
    records = [Record(id=_id(i), embedding=VECTORS[i]) for i in rows]
    with Store(data) as store:
        store.upsert(POOL, records, model=model, dim=DIM)
        assert ensure_index(store, POOL).ntotal == PER_CALL
    assert len(calls[0]) == BATCHES_PER_CALL


def _verify_store(data: Path, acked: list[int], n_calls: int) -> dict[str, Any]:
    """Acknowledged records present with their vectors, whole batches only, nothing else; index usable."""
    with Store(data) as store:
        arrays = store.load_vectors(POOL)
        row_of = {rid: r for r, rid in enumerate(arrays.ids)}
        expected: list[int] = []
        for c in acked:
            for b in range(BATCHES_PER_CALL):
                expected.extend(_batch_rows(c, b))
        missing = [i for i in expected if _id(i) not in row_of]
        assert not missing, f"{len(missing)} acknowledged records missing, e.g. {_id(missing[0])}"
        interrupted = max(acked) + 1
        flags = []
        if interrupted < n_calls:
            for b in range(BATCHES_PER_CALL):
                present = [_id(i) in row_of for i in _batch_rows(interrupted, b)]
                assert all(present) or not any(present), f"batch {b} of call {interrupted} is partial"
                flags.append(all(present))
            assert flags == sorted(flags, reverse=True), (
                f"batches of the interrupted call out of order: {flags}"
            )
            expected.extend(i for b, ok in enumerate(flags) if ok for i in _batch_rows(interrupted, b))
        assert len(arrays.ids) == len(expected) == store.get_pool(POOL).count, "records beyond the batches"
        rows = np.array([row_of[_id(i)] for i in expected])
        error = float(np.abs(arrays.vectors[rows] - VECTORS[expected]).max())
        assert error < 1e-6
        manager = IndexManager(store)
        index = manager.ensure(POOL)
        assert index.ntotal == len(expected)
        probe = np.array(expected[:: max(1, len(expected) // 5)][:5])
        hits = manager.search(POOL, VECTORS[probe], 1).ids
        assert [h[0] for h in hits] == [_id(i) for i in probe]
    return {
        "records_present": len(expected),
        "batches_of_interrupted_call_present": sum(flags),
        "index": "extended" if manager.extends else "rebuilt" if manager.builds else "opened",
        "max_vector_error": error,
    }


def run_crash(seed: int, n: int, tmp: Path, model: str) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    calls = [_call(c) for c in range(n // PER_CALL)]
    data = tmp / "data"
    _seed_store(data, model, calls)
    kill_after = int(rng.integers(1, len(calls) - 3))  # calls acknowledged before the kill; >= 3 remain
    first = ServeProcess(data, tmp / "serve-1.log").start()
    ingester = Ingester(first.address, calls)
    try:
        started = time.monotonic()
        ingester.start()
        assert wait_until(lambda: len(ingester.acked) > kill_after or not ingester.is_alive(), 600, 0.005)
        times = [started, *ingester.ack_times]
        per_call = times[-1] - times[-2]  # the latest call's time: the first one also connects
        time.sleep(float(rng.uniform(0, 1.0)) * per_call)
        killed_at = time.monotonic() - started
        first.kill()
        ingester.join(timeout=60)
    finally:
        first.kill()
    acked = list(ingester.acked)
    figures: dict[str, Any] = {
        "seed": seed,
        "records": n,
        "calls": len(calls),
        "killed_after_s": round(killed_at, 2),
        "calls_acknowledged": len(acked),
        "records_acknowledged": len(acked) * PER_CALL,
        "client_saw": ingester.error or "all acknowledged",
        "first_startup_s": round(first.startup_seconds, 1),
    }
    assert len(acked) < len(calls), "the kill came after the last call: no crash during ingest"
    figures.update(_verify_store(data, acked, len(calls)))
    with ServeProcess(data, tmp / "serve-2.log").start() as second:
        figures["restart_s"] = round(second.startup_seconds, 1)
        with Client(second.address, timeout=300) as client:
            assert client.pool(POOL).count == figures["records_present"]
            target = clustered(16, seed=seed + 1)
            after_restart = as_ranking(client.select(POOL, target.tolist(), k=10)[0])
            for c in range(max(acked) + 1, len(calls)):  # the client re-sends what was not acknowledged
                _ingest(second.address, calls[c])
            assert client.pool(POOL).count == n
            grown_target = clustered(16, seed=seed + 2)  # a cold solve on the completed pool
            ranked, summary = client.select(POOL, grown_target.tolist(), k=10)
            figures["select_after_restart_mode"] = summary.mode
        assert second.stop() == 0
    with Store(data) as store:  # rows are append-only: the first rows are the pool after the restart
        arrays = store.load_vectors(POOL)
    present = figures["records_present"]
    want = reference_ranking(arrays.vectors[:present], arrays.ids[:present], target, 10)
    assert_same_ranking(after_restart, want)
    assert_same_ranking(as_ranking(ranked), reference_ranking(arrays.vectors, arrays.ids, grown_target, 10))
    figures["rankings_equal_reference"] = 2
    return figures


def _ingest(address: str, batches: list[pb.IngestRequest]) -> None:
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        pb_grpc.SelectionServiceStub(ch).Ingest(iter(batches), timeout=300)


@pytest.mark.parametrize(
    ("seed", "n"),
    [
        pytest.param(0, 10_000, id="seed0-10k"),
        *(pytest.param(s, TOTAL, id=f"seed{s}-50k", marks=pytest.mark.slow) for s in (1, 2, 3, 4)),
    ],
)
def test_sigkill_during_ingest(
    seed: int, n: int, tmp_path: Path, embedder: Any, figures: dict[str, Any]
) -> None:
    """SIGKILL at a random moment of a streamed ingest loses no acknowledged record and leaves no partial
    batch; the store and index open and a restarted server selects and takes the rest."""
    figures.update(run_crash(seed, n, tmp_path, embedder.model_id))
