"""Scale-out on a local Ray (2 CPUs): sharded scoring equals the single process, distributed ingest
equals the local ingest, a killed task is retried without duplicates, and ``--ray`` without Ray fails
early naming the extra."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gotd.cache.store.core import PoolArrays, Store
from gotd.server.ingest.embedder import Embedder
from gotd.server.ingest.pipeline import Ingestor
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.modes import top_k
from gotd.server.selection.scoring import ScorePass
from tests.conftest import clustered

pytestmark = [
    # Ray Data's DataContext() sets its own deprecated defaults, which warn on every construction.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

WORDS = [
    *("alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "music", "paper", "garden"),
    *("engine", "silver", "quiet", "window", "bridge", "forest", "orange", "castle", "winter"),
    *("summer", "pocket", "yellow", "marble", "rocket", "violin", "copper", "lantern", "harbor"),
]
N_TEXTS = 5000


def _reference(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, eps: float, k: int | None,
               ids: list[str] | None, block_size: int | None = None) -> list[tuple[int, float]]:  # fmt: skip
    f = c_transform(x, y, g, eps=eps, block_size=block_size)
    return top_k(calibrated_gradient(f).numpy(), k, ids=ids)


@dataclass(frozen=True)
class RankCase:
    reason: str
    n: int
    m: int
    k: int | None
    shards: int
    block_size: int | None = None
    dtype: torch.dtype = torch.float32


RANK_CASES = [
    RankCase("default blocks (4096 rows at m=4096): 8 shards, ties across shards", 30_000, 4096, 500, 8),
    RankCase("explicit small blocks, whole ranking", 7_000, 50, None, 5, block_size=1000),
    RankCase("k above n", 900, 7, 5_000, 3, block_size=100),
    RankCase("k = 0", 900, 7, 0, 3, block_size=100),
    RankCase("one row (the calibrated mean of no others is 0)", 1, 5, 3, 2),
    RankCase("float64", 3_000, 20, 50, 4, block_size=256, dtype=torch.float64),
]


def _problem(case: RankCase, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    x = torch.from_numpy(clustered(case.n, seed=seed)).to(case.dtype)
    if case.n > 200:
        x[case.n // 2 : case.n // 2 + 100] = x[:100]  # identical rows in different shards: ties by id
    y = torch.from_numpy(clustered(case.m, seed=seed + 1, centers=3)).to(case.dtype)
    g = (0.05 * torch.randn(case.m, generator=torch.Generator().manual_seed(seed))).to(case.dtype)
    ids = [f"c{(i * 7919) % 1_000_003:07d}" for i in range(case.n)]  # id order differs from row order
    return x, y, g, ids


def test_ray_sharded_rank_equals_single_process(ray_local: Any) -> None:
    from gotd.server.ray.backend import RayScorer, sharded_rank

    with RayScorer(workers=2) as scorer:
        for seed, case in enumerate(RANK_CASES):
            x, y, g, ids = _problem(case, seed)
            want = _reference(x, y, g, 0.1, case.k, ids, case.block_size)
            got = sharded_rank(x, y, g, eps=0.1, k=case.k, ids=ids, shards=case.shards, scorer=scorer,
                               block_size=case.block_size)  # fmt: skip
            assert [ids[r] for r, _ in got] == [ids[r] for r, _ in want], case.reason
            assert got == want, case.reason  # same rows, same order, scores equal bit for bit
        # A repeated request moves only g (the shards and the target set stay in the workers).
        case = RANK_CASES[0]
        x, y, g, ids = _problem(case, 0)
        for _ in range(2):  # the first may place the shards again (an LRU of 2 snapshots)
            again = scorer.rank(x, y, g, eps=0.1, k=case.k, ids=ids, shards=case.shards)
        assert again == _reference(x, y, g, 0.1, case.k, ids)
        assert scorer.last.shards_shipped == 0
        assert scorer.last.sent == 4 * case.m
        assert scorer.last.received < 8 * 12 * case.k + 1000  # k pairs per shard and 8 exact sums


def test_ray_scorer_f_is_the_in_process_c_transform(ray_local: Any) -> None:
    from gotd.server.ray.backend import RayScorer

    x, y, g, _ = _problem(RankCase("", 20_000, 4096, 10, 4), 7)
    progress: list[tuple[int, int]] = []
    with RayScorer(workers=2, shards=4) as scorer:
        f = scorer(ScorePass(x, y, g, 0.1, "pool:uid:v1:all", lambda d, n: progress.append((d, n))))
        assert torch.equal(f, c_transform(x, y, g, eps=0.1))
        assert len(progress) == 4
        assert progress[-1] == (20_000, 20_000)
        # A worker that restarts loses its shards: the request places them again and still agrees.
        ray_local.kill(scorer._workers[0], no_restart=False)
        f2 = scorer(ScorePass(x, y, g, 0.1, "pool:uid:v1:all", lambda d, n: None))
        assert torch.equal(f2, f)


def test_ray_server_scores_on_ray(ray_local: Any, make_server: Any) -> None:
    from gotd.client.client import Client
    from gotd.server.ray.backend import RayScorer

    x = clustered(2000, seed=3)
    x[1000:] = x[:1000]  # every embedding twice: near-copy skipping runs on the Ray scores too
    y = clustered(30, seed=4, centers=2)
    # texts as well as embeddings: the fused cost (sketch rows) is scored on the workers too
    pool = [
        {"id": f"c{i:05d}", "embedding": v.tolist(), "text": f"topic{i % 5} word{i % 11} term{i % 3}"}
        for i, v in enumerate(x)
    ]
    targets = [
        {"id": f"t{j}", "embedding": v.tolist(), "text": f"topic{j % 2} word{j}"} for j, v in enumerate(y)
    ]
    results = []
    for address in (None, "auto"):
        server = make_server(ray_address=address)
        try:
            with Client(server.address, timeout=120) as client:
                client.ingest("pool", pool)
                run = []
                for cost in ("embedding", "fused"):
                    ranked, summary = client.select("pool", targets, k=100, mode="global", eps=0.1, cost=cost)
                    assert summary.cost == cost
                    assert summary.near_copies_skipped > 0
                    assert len(ranked) == 100
                    assert len({x[int(c.id[1:]) % 1000].tobytes() for c in ranked}) == 100
                    run.append([(c.id, c.score) for c in ranked])
            assert run[0] != run[1]
            results.append(run)
        finally:
            scorer = server.running.engine.scorer
            assert isinstance(scorer, RayScorer) == (address is not None)
            if isinstance(scorer, RayScorer):
                scorer.close()  # frees the CPUs of its workers for the next tests
    assert results[0] == results[1]


def test_ray_bench_quick_writes_the_report(ray_local: Any, tmp_path: Path) -> None:
    from gotd.lab.bench.ray import run

    result = run(tmp_path, quick=True)
    assert all(case["exact"] for case in result["ray"])
    assert [case["rank_sent"] for case in result["ray"]] == [4 * result["m"]] * 2
    report = (tmp_path / "ray.md").read_text()
    assert "pairs/s per worker" in report
    assert "not a measurement" in report


# -- ingest ------------------------------------------------------------------------------------------


def _texts_file(path: Path, n: int, *, vectors: int = 0) -> Path:
    rng = random.Random(0)
    emb = clustered(vectors, seed=9) if vectors else None
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            record: dict[str, Any] = {"id": f"t{i:05d}", "domain": rng.choice("ab"), "meta": {"i": i}}
            if emb is not None and i < vectors:
                record["embedding"] = emb[i].tolist()
            else:
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
                record["text"] = f"{words} {i}"
            fh.write(json.dumps(record) + "\n")
    return path


def _to_parquet(jsonl: Path, row_group_size: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    table = pa.table(
        {
            "id": [r["id"] for r in items],
            "text": [r.get("text") for r in items],
            "embedding": pa.array([r.get("embedding") for r in items], pa.list_(pa.float32())),
            "domain": [r["domain"] for r in items],
            "meta": [json.dumps(r["meta"]) for r in items],
        }
    )
    out = jsonl.with_suffix(".parquet")
    pq.write_table(table, out, row_group_size=row_group_size)
    return out


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _texts_file(tmp_path_factory.mktemp("ray") / "texts.jsonl", N_TEXTS)


@dataclass(frozen=True)
class Reference:
    arrays: PoolArrays
    metadata: list[tuple[str, str, str | None]]
    seconds: float


@pytest.fixture(scope="module")
def local_pool(texts: Path, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The file ingested in process (the reference), without an embedding cache."""
    with Store(tmp_path_factory.mktemp("local")) as store:
        started = time.perf_counter()
        Ingestor(store, embedder, None).ingest_file("pool", texts, batch_size=256, progress=False)
        seconds = time.perf_counter() - started
        arrays = store.load_vectors("pool")
        return Reference(arrays, store.metadata("pool", list(range(len(arrays.ids)))), seconds)


def test_ray_ingest_equals_local_ingest(ray_local: Any, texts: Path, local_pool: Reference,
                                       tmp_path: Path) -> None:  # fmt: skip
    from gotd.server.ray.ingest import ray_ingest

    with Store(tmp_path / "ray") as store:
        started = time.perf_counter()
        summary = ray_ingest(texts, store, pool="pool", batch_size=256, actors=2, progress=False)
        seconds = time.perf_counter() - started
        got, want = store.load_vectors("pool"), local_pool.arrays
        diff = float(np.abs(got.vectors - want.vectors).max())
        print(
            f"\n{N_TEXTS} short texts: local {local_pool.seconds:.1f} s, ray {seconds:.1f} s, "
            f"max |dv| {diff:.2g}"
        )
        assert (summary.inserted, summary.embedded) == (N_TEXTS, N_TEXTS)
        assert got.ids == want.ids  # same ids, in file order
        assert store.metadata("pool", list(range(N_TEXTS))) == local_pool.metadata  # domain, meta, text
        assert (got.model, got.dim) == (want.model, want.dim)
        assert diff <= 1e-6


def test_ray_ingest_killed_task_is_retried_without_duplicates(ray_local: Any, embedder: Embedder,
                                                               tmp_path: Path) -> None:  # fmt: skip
    from gotd.server.ingest.embedder import embed_with_cache
    from gotd.server.ray.ingest import Encoder, ray_ingest

    n, given = 600, 200
    path = _to_parquet(_texts_file(tmp_path / "mixed.jsonl", n, vectors=given), row_group_size=100)
    marker = tmp_path / "crash-once"
    marker.touch()
    crash_marker = str(marker)

    class CrashOnce(Encoder):  # pickled by value; the actor that takes the marker dies mid-batch
        def __call__(self, batch: Any) -> Any:
            try:
                os.remove(crash_marker)
            except FileNotFoundError:
                return super().__call__(batch)
            os._exit(1)

    with Store(tmp_path / "store") as store:
        first = ray_ingest(path, store, pool="pool", batch_size=100, actors=2, progress=False,
                           encode_batch_size=50, encoder=CrashOnce)  # fmt: skip
        assert not marker.exists(), "an encoder actor died on its first batch"
        # Every record was delivered once: all inserted, none delivered again (that would be "unchanged").
        assert (first.inserted, first.updated, first.unchanged) == (n, 0, 0)
        arrays = store.load_vectors("pool")
        assert arrays.ids == [f"t{i:05d}" for i in range(n)]
        assert store.get_pool("pool").count == n
        vectors = clustered(given, seed=9)
        assert np.allclose(arrays.vectors[:given], vectors, atol=1e-6)
        texts = [str(t) for _, _, t in store.metadata("pool", list(range(given, n)))]
        assert float(np.abs(arrays.vectors[given:] - embed_with_cache(embedder, None, texts)).max()) <= 1e-6
        # Idempotent: ingesting the file again writes nothing and keeps one row per id.
        again = ray_ingest(path, store, pool="pool", batch_size=100, actors=2, progress=False)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, n)
        assert again.version == first.version
        assert store.get_pool("pool").count == n


def test_ray_ingest_bad_record_names_its_line(ray_local: Any, tmp_path: Path) -> None:
    from gotd.cache.errors import InvalidArgument
    from gotd.server.ray.ingest import ray_ingest

    path = _texts_file(tmp_path / "bad.jsonl", 50)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "x", "txt": "typo"}) + "\n")
    with (
        Store(tmp_path / "store") as store,
        pytest.raises(InvalidArgument, match=r"bad.jsonl:51: unknown field"),
    ):
        ray_ingest(path, store, pool="pool", actors=1, progress=False)


def test_ray_cli_without_ray_fails_early_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from gotd.client.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    records = _texts_file(tmp_path / "r.jsonl", 3)
    data = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["ingest", str(records), "--pool", "p", "--ray", "--data-dir", str(data)]
    )
    assert result.exit_code == 2
    assert "pip install 'gotd[ray]'" in result.output
    assert not data.exists(), "nothing may happen before the check"
    served = CliRunner().invoke(app, ["serve", "--ray-address", "auto", "--data-dir", str(data)])
    assert served.exit_code == 2
    assert "pip install 'gotd[ray]'" in served.output
    assert not data.exists()
    from gotd.server.ray.backend import RayScorer
    from gotd.server.ray.ingest import ray_ingest

    with pytest.raises(ImportError, match=r"gotd\[ray\]"):
        RayScorer()
    with Store(tmp_path / "s") as store, pytest.raises(ImportError, match=r"gotd\[ray\]"):
        ray_ingest(records, store, pool="p")
