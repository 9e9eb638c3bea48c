"""Sketch backfill of pools written without sketches: the store method, the CLI, and a live server.

Real LMDB in tmp_path; the end-to-end test runs a real server and backfills from another process.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from gotd.cache.errors import FailedPrecondition, InvalidArgument, NotFound
from gotd.cache.records import Record
from gotd.cache.store.core import BackfillResult, Store
from gotd.cache.store.layout import PoolRecord
from gotd.cache.store.sketch import backfill_marker
from gotd.client.cli import app
from gotd.client.client import Client
from gotd.server.ingest.embedder import Embedder
from gotd.server.selection.sketches import SKETCH_BUCKETS, tf_rows, tf_sparse
from tests._store_helpers import dense_sketches, unit_vectors

DIM = 16
N = 700  # three sketch chunks of 256 rows


def _text(i: int) -> str | None:
    """Every 7th row has no text, the rest a text of their own."""
    if i % 7 == 3:
        return None
    return f"document {i} about topic {i % 5} and more words {i * 13}"


TEXTS = [_text(i) for i in range(N)]
WITHOUT = sum(1 for t in TEXTS if not t)


def _records(texts: Sequence[str | None], *, start: int = 0, seed: int = 0) -> list[Record]:
    x = unit_vectors(len(texts), DIM, seed=seed)
    return [Record(id=f"r{start + i}", text=t, embedding=x[i]) for i, t in enumerate(texts)]


def _old_pool(path: Path, texts: Sequence[str | None] = TEXTS) -> int:
    """A pool ``p`` written in batches by a store without a sketch function; its version."""
    records = _records(texts)
    with Store(path) as store:
        for start in range(0, len(records), 300):
            version = store.upsert("p", records[start : start + 300], model="m", dim=DIM).version
        assert store.load_vectors("p").sketches is None
    return version


def _pool_record(store: Store, pool: str = "p") -> PoolRecord:
    raw = store.env.read(lambda txn: txn.get(pool.encode(), db=store.env.dbs["pools"]))
    assert raw is not None
    return PoolRecord.decode(pool, raw)


def _has_marker(store: Store, prefix: bytes) -> bool:
    return store.env.read(lambda txn: txn.get(backfill_marker(prefix), db=store.env.dbs["meta"]) is not None)


@pytest.fixture
def old(tmp_path: Path) -> tuple[Path, int]:
    return tmp_path, _old_pool(tmp_path)


def test_backfill_sketches_the_stored_texts_and_bumps_the_version_once(old: tuple[Path, int]) -> None:
    path, version = old
    with Store(path, sketcher=tf_sparse) as store:
        before = store.load_vectors("p")
        seen: list[tuple[int, int]] = []
        result = store.backfill_sketches("p", batch_rows=256, progress=lambda d, t: seen.append((d, t)))
        assert result == BackfillResult(N - WITHOUT, WITHOUT, version + 1)
        assert seen == [(256, N), (512, N), (N, N)]
        after = store.load_vectors("p")
        assert after.version == version + 1
        assert after.sketches is not None
        assert dense_sketches(after).shape == (N, SKETCH_BUCKETS)
        np.testing.assert_array_equal(dense_sketches(after), tf_rows(TEXTS))
        assert not dense_sketches(after)[[i for i, t in enumerate(TEXTS) if not t]].any()
        # row versions (the records' writes) stay; vectors and ids too
        np.testing.assert_array_equal(after.row_versions, before.row_versions)
        np.testing.assert_array_equal(after.vectors, before.vectors)
        assert after.ids == before.ids
        rec = _pool_record(store)
        assert (rec.sketch_buckets, rec.sketch_rows) == (SKETCH_BUCKETS, 256)
        assert not _has_marker(store, rec.prefix)
        again = store.backfill_sketches("p")
        assert again == BackfillResult(0, WITHOUT, version + 1), "a second run is a no-op"
        # from now on upserts keep the pool's sketches themselves
        store.upsert("p", _records(["a later text"], start=N, seed=9), model="m", dim=DIM)
        later = dense_sketches(store.load_vectors("p"))
        assert later is not None
        np.testing.assert_array_equal(later[N], tf_rows(["a later text"])[0])


def test_a_store_without_a_sketch_function_is_refused(old: tuple[Path, int]) -> None:
    path, version = old
    with Store(path) as store:
        with pytest.raises(FailedPrecondition, match="sketch function"):
            store.backfill_sketches("p")
        assert store.get_pool("p").version == version
    with Store(path, sketcher=tf_sparse) as store:
        with pytest.raises(NotFound):
            store.backfill_sketches("nope")
        with pytest.raises(InvalidArgument):
            store.backfill_sketches("p", batch_rows=0)


def test_a_pool_without_any_text_is_left_as_it_is(tmp_path: Path) -> None:
    version = _old_pool(tmp_path, [None, None, None])
    with Store(tmp_path, sketcher=tf_sparse) as store:
        assert store.backfill_sketches("p") == BackfillResult(0, 3, version)
        assert store.load_vectors("p").sketches is None
        assert _pool_record(store).sketch_buckets == 0


class StopBackfillError(Exception):
    pass


def _stop_after(calls: int) -> Any:
    seen = [0]

    def progress(done: int, total: int) -> None:
        seen[0] += 1
        if seen[0] >= calls:
            raise StopBackfillError(f"stopped at {done}/{total}")

    return progress


@pytest.mark.parametrize("calls", [1, 3], ids=["after-first-batch", "after-last-batch"])
def test_an_interrupted_backfill_finishes_on_the_rerun_as_a_clean_run(tmp_path: Path, calls: int) -> None:
    clean_dir, broken_dir = tmp_path / "clean", tmp_path / "broken"
    version = _old_pool(clean_dir)
    assert _old_pool(broken_dir) == version
    with Store(clean_dir, sketcher=tf_sparse) as store:
        clean = store.backfill_sketches("p", batch_rows=256)
        clean_arrays = store.load_vectors("p")
    with Store(broken_dir, sketcher=tf_sparse) as store:
        with pytest.raises(StopBackfillError):
            store.backfill_sketches("p", batch_rows=256, progress=_stop_after(calls))
        assert store.get_pool("p").version == version, "no bump before every row is done"
        assert _has_marker(store, _pool_record(store).prefix)
        partial = dense_sketches(store.load_vectors("p"))
        assert partial is not None
        done = min(256 * calls, N)
        np.testing.assert_array_equal(partial[:done], tf_rows(TEXTS[:done]))
        assert not partial[done:].any()
        rerun = store.backfill_sketches("p", batch_rows=256)
        already = sum(1 for t in TEXTS[:done] if t)
        assert rerun == BackfillResult(clean.rows_sketched - already, WITHOUT, version + 1)
        arrays = store.load_vectors("p")
        assert not _has_marker(store, _pool_record(store).prefix)
    assert arrays.version == clean_arrays.version == version + 1
    assert arrays.sketches is not None
    assert clean_arrays.sketches is not None
    np.testing.assert_array_equal(dense_sketches(arrays), dense_sketches(clean_arrays))
    np.testing.assert_array_equal(arrays.row_versions, clean_arrays.row_versions)


def test_rows_written_by_a_store_without_sketches_into_a_sketched_pool_are_filled(tmp_path: Path) -> None:
    records = _records(TEXTS[:20])
    with Store(tmp_path, sketcher=tf_sparse) as store:
        store.upsert("p", records[:10], model="m", dim=DIM)
    with Store(tmp_path) as store:  # an older writer: zero rows
        version = store.upsert("p", records[10:], model="m", dim=DIM).version
    with Store(tmp_path, sketcher=tf_sparse) as store:
        missing = sum(1 for t in TEXTS[10:20] if t)
        result = store.backfill_sketches("p")
        assert result == BackfillResult(missing, sum(1 for t in TEXTS[:20] if not t), version + 1)
        got = dense_sketches(store.load_vectors("p"))
        assert got is not None
        np.testing.assert_array_equal(got, tf_rows(TEXTS[:20]))


def test_a_pool_of_another_sketch_width_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path, sketcher=functools.partial(tf_sparse, buckets=64)) as store:
        store.upsert("p", _records(["x y z"]), model="m", dim=DIM)
    with Store(tmp_path, sketcher=tf_sparse) as store, pytest.raises(FailedPrecondition, match="64 buckets"):
        store.backfill_sketches("p")


def test_rows_rewritten_during_the_backfill_get_the_sketch_of_their_new_text(old: tuple[Path, int]) -> None:
    path, _ = old
    with Store(path, sketcher=tf_sparse) as store:
        calls = [0]

        def racing(texts: Sequence[str | None]) -> np.ndarray:
            calls[0] += 1
            if calls[0] == 2:  # the first batch, between its read and its write
                vectors = store.load_vectors("p").vectors
                changed = [
                    Record(id="r0", text="rewritten meanwhile", embedding=vectors[0]),
                    Record(id="r600", text="a later batch changed", embedding=vectors[600]),
                    Record(id="r3", text="now with a text", embedding=vectors[3]),
                ]
                store.upsert("p", changed, model="m", dim=DIM)
            return tf_rows(texts)

        store.sketcher = racing
        result = store.backfill_sketches("p", batch_rows=256)
        expected = list(TEXTS)
        expected[0], expected[3] = "rewritten meanwhile", "now with a text"
        expected[600] = "a later batch changed"
        got = dense_sketches(store.load_vectors("p"))
        assert got is not None
        np.testing.assert_array_equal(got, tf_rows(expected))
        assert result.rows_without_text == WITHOUT - 1
        assert store.backfill_sketches("p").rows_sketched == 0


def test_delete_pool_removes_an_unfinished_backfill_marker(old: tuple[Path, int]) -> None:
    path, _ = old
    with Store(path, sketcher=tf_sparse) as store:
        with pytest.raises(StopBackfillError):
            store.backfill_sketches("p", batch_rows=256, progress=_stop_after(1))
        prefix = _pool_record(store).prefix
        assert _has_marker(store, prefix)
        store.delete_pool("p")
        assert not _has_marker(store, prefix)


def test_cli_backfills_all_pools_or_the_named_ones(tmp_path: Path) -> None:
    version = _old_pool(tmp_path)
    with Store(tmp_path) as store:
        store.upsert("q", _records(["one text", None], seed=2), model="m", dim=DIM)
    runner = CliRunner()
    named = runner.invoke(app, ["sketch-backfill", "--data-dir", str(tmp_path), "--pool", "q"])
    assert named.exit_code == 0, named.output
    assert "q: sketched 1, without text 1; version 2" in named.stdout
    assert "p:" not in named.stdout
    every = runner.invoke(app, ["sketch-backfill", "--data-dir", str(tmp_path)])
    assert every.exit_code == 0, every.output
    lines = every.stdout.splitlines()
    assert lines == [
        f"p: sketched {N - WITHOUT}, without text {WITHOUT}; version {version + 1}",
        "q: sketched 0, without text 1; version 2",
    ]
    missing = runner.invoke(app, ["sketch-backfill", "--data-dir", str(tmp_path), "--pool", "nope"])
    assert missing.exit_code == 1
    assert "error: NOT_FOUND: pool 'nope' does not exist" in missing.stderr
    empty = runner.invoke(app, ["sketch-backfill", "--data-dir", str(tmp_path / "none")])
    assert empty.exit_code == 1
    assert "error: NOT_FOUND: no store at" in empty.stderr
    assert not (tmp_path / "none").exists(), "a missing store is not created"
    assert "server uses the same data dir" in runner.invoke(app, ["sketch-backfill", "--help"]).stdout


TOPICS = {
    "maths": "The theorem about prime numbers and algebraic equations is proved by induction {}.",
    "cooking": "Slowly simmer the onions with butter, garlic and fresh herbs for dinner {}.",
    "football": "The striker scored a late goal and the team won the league match {}.",
}


def test_a_live_server_uses_the_fused_cost_once_the_pool_is_backfilled(
    tmp_path: Path, make_server: Any, embedder: Embedder
) -> None:
    data = tmp_path / "live"
    texts = [t.format(i) for i in range(12) for t in TOPICS.values()]
    with Store(data) as store:  # written as by the previous release: texts, no sketches
        store.upsert(
            "old",
            [Record(id=f"c{i}", text=t) for i, t in enumerate(texts)],
            model=embedder.model_id,
            dim=embedder.dim,
            vectors=embedder.encode(texts),
        )
    server = make_server(data_dir=data)
    targets = ["A lemma on prime numbers and equations.", "Proof of a theorem by induction."]
    with Client(server.address, timeout=120) as client:
        _, auto = client.select("old", targets, k=5)
        assert auto.cost == "embedding"
        with pytest.raises(grpc.RpcError) as err:
            client.select("old", targets, k=5, cost="fused")
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "gotd.client.cli", "sketch-backfill", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"old: sketched {len(texts)}, without text 0; version 2"
        ranked, fused = client.select("old", targets, k=5, cost="fused")
        assert fused.cost == "fused"
        assert len(ranked) == 5
        assert client.select("old", targets, k=5)[1].cost == "fused", "auto now picks the fused cost"
