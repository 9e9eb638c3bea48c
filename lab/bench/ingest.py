"""``gotd bench ingest``: ingest throughput against its baselines, written to docs/benchmarks/ingest.md.

Three measurements, each with its baseline measured in the same run:

- text ingest (validate → embedding cache → encoder → one LMDB transaction per batch) against bare
  ``SentenceTransformer.encode`` of the same wiki extracts (the same model object, same batch size);
  rounds alternate and the best of each is kept, because the cores are shared;
- precomputed-vector ingest through :class:`~gotd.server.ingest.pipeline.Ingestor` and straight into
  :meth:`Store.upsert`, against the goal of 100k vectors/s;
- bulk read of the whole pool into one float32 array (:meth:`Store.load_vectors`), against allocating
  and filling an array of the same size (the page-fault floor) and a plain in-memory copy.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.embeddings import EmbeddingCache
from gotd.lab.bench.util import best_seconds, machine
from gotd.lab.corpora.wiki import load_wiki
from gotd.server.ingest.embedder import Embedder
from gotd.server.ingest.pipeline import Ingestor
from gotd.server.selection.sketches import tf_sparse

NAME = "ingest"
TEXT_BATCH = 256
PAIR_BATCH = 64
VECTOR_BATCH = 10_000
DIM = 384


def _texts(n: int) -> list[tuple[str, str]]:
    docs = load_wiki()
    step = max(1, len(docs) // n)
    return [(d.id, d.text) for d in docs[::step][:n]]


class _Clock:
    """Wall and process CPU time of each timed call of one path."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def time(self, fn: Callable[[], Any]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.walls.append(time.perf_counter() - wall)
        self.cpus.append(time.process_time() - cpu)

    @property
    def wall(self) -> float:
        return sum(self.walls)


def _paired(bare: _Clock, ingest: _Clock) -> dict[str, float]:
    """Median over pairs of bare time / ingest time (wall and CPU): robust to bursts of load."""
    wall = np.median(np.asarray(bare.walls) / np.asarray(ingest.walls))
    cpu = np.median(np.asarray(bare.cpus) / np.maximum(np.asarray(ingest.cpus), 1e-9))
    return {"ratio": float(wall), "cpu_ratio": float(cpu), "pairs": float(len(bare.walls))}


def _encode(embedder: Embedder, texts: list[str]) -> None:
    embedder._model.encode(
        texts, batch_size=embedder.batch_size, normalize_embeddings=True, show_progress_bar=False
    )


def _alternate(k: int, steps: list[tuple[_Clock, Callable[[], Any]]]) -> None:
    for clock, step in steps if k % 2 else steps[::-1]:
        clock.time(step)


def bench_text(embedder: Embedder, work: Path, n: int) -> dict[str, float]:
    """Text ingest vs bare encode, paired batch by batch so that load on shared cores hits both alike.

    For each batch of ``PAIR_BATCH`` records: bare ``SentenceTransformer.encode`` of its texts and
    ``Ingestor.ingest_batch`` of its records (empty cache and store), in alternating order.
    """
    docs = _texts(n)
    texts = [t for _, t in docs]
    _encode(embedder, texts[:8])  # warm-up
    bare, ingest, again = _Clock(), _Clock(), _Clock()
    with Store(work / "text", sketcher=tf_sparse) as store:
        ingestor = Ingestor(store, embedder, EmbeddingCache(store))
        records = [Record.create(i, text=t) for i, t in docs]
        starts = range(0, len(records), PAIR_BATCH)
        for k, start in enumerate(starts):
            batch, chunk = records[start : start + PAIR_BATCH], texts[start : start + PAIR_BATCH]
            _alternate(
                k,
                [
                    (bare, partial(_encode, embedder, chunk)),
                    (ingest, partial(ingestor.ingest_batch, "wiki", batch)),
                ],
            )
        for start in starts:
            again.time(partial(ingestor.ingest_batch, "wiki", records[start : start + PAIR_BATCH]))
    paired = _paired(bare, ingest)
    return {
        "texts": float(len(texts)),
        "median_words": float(np.median([len(t.split()) for t in texts])),
        "bare_texts_per_s": len(texts) / bare.wall,
        "ingest_texts_per_s": len(texts) / ingest.wall,
        "ratio": paired["ratio"],
        "cpu_ratio": paired["cpu_ratio"],
        "pairs": paired["pairs"],
        "reingest_texts_per_s": len(texts) / again.wall,
    }


def bench_text_file(embedder: Embedder, work: Path, n: int, parts: int) -> dict[str, float]:
    """``Ingestor.ingest_file`` of JSONL files vs one bare encode call of each file's texts, paired."""
    docs = _texts(n)
    size = -(-len(docs) // parts)
    bare, ingest = _Clock(), _Clock()
    for k in range(parts):
        part = docs[k * size : (k + 1) * size]
        path = work / f"wiki{k}.jsonl"
        path.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in part) + "\n", encoding="utf-8")
        with Store(work / f"file{k}", sketcher=tf_sparse) as store:
            ingestor = Ingestor(store, embedder, EmbeddingCache(store))
            _alternate(
                k,
                [
                    (bare, partial(_encode, embedder, [t for _, t in part])),
                    (
                        ingest,
                        partial(ingestor.ingest_file, "wiki", path, batch_size=TEXT_BATCH, progress=False),
                    ),
                ],
            )
    paired = _paired(bare, ingest)
    return {
        "file_bare_texts_per_s": len(docs) / bare.wall,
        "file_ingest_texts_per_s": len(docs) / ingest.wall,
        "file_ratio": paired["ratio"],
        "file_cpu_ratio": paired["cpu_ratio"],
        "file_pairs": paired["pairs"],
        "file_texts": float(size),
    }


def bench_vectors(embedder: Embedder, work: Path, n: int, rounds: int) -> tuple[dict[str, float], Store]:
    """Precomputed-vector ingest (Ingestor and raw upsert), best of ``rounds`` fresh pools each."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    started = time.perf_counter()
    records = [Record(id=f"doc-{i:09d}", embedding=x[i], domain=f"d{i % 8}") for i in range(n)]
    build = time.perf_counter() - started
    store = Store(work / "vectors")
    ingestor = Ingestor(store, embedder, EmbeddingCache(store))
    batches = [(s, records[s : s + VECTOR_BATCH], x[s : s + VECTOR_BATCH]) for s in range(0, n, VECTOR_BATCH)]
    via_ingest = via_upsert = unchanged = float("inf")
    for r in range(rounds):
        started = time.perf_counter()
        for _, batch, _ in batches:
            ingestor.ingest_batch(f"vectors{r}", batch)
        via_ingest = min(via_ingest, time.perf_counter() - started)
        started = time.perf_counter()
        for _, batch, vectors in batches:
            store.upsert(f"raw{r}", batch, model="m", dim=DIM, vectors=vectors)
        via_upsert = min(via_upsert, time.perf_counter() - started)
        started = time.perf_counter()
        for _, batch, _ in batches:
            ingestor.ingest_batch(f"vectors{r}", batch)
        unchanged = min(unchanged, time.perf_counter() - started)
    del records, batches
    return (
        {
            "vectors": float(n),
            "rounds": float(rounds),
            "record_build_per_s": n / build,
            "ingest_vectors_per_s": n / via_ingest,
            "upsert_vectors_per_s": n / via_upsert,
            "reingest_vectors_per_s": n / unchanged,
        },
        store,
    )


def bench_read(store: Store, pool: str) -> dict[str, float]:
    """Bulk read of ``pool`` (first read in the process, then best of three) vs memory floors."""
    started = time.perf_counter()
    arrays = store.load_vectors(pool)
    cold = time.perf_counter() - started
    size = arrays.vectors.nbytes
    src = arrays.vectors.copy()
    del arrays
    warm = best_seconds(lambda: store.load_vectors(pool), 3)

    def fresh_fill() -> None:
        out = np.empty_like(src)
        out.fill(1.0)

    def fresh_copy() -> None:
        out = np.empty_like(src)
        np.copyto(out, src)

    fill = best_seconds(fresh_fill, 3)
    copy = best_seconds(fresh_copy, 3)
    return {
        "bytes": float(size),
        "cold_gb_per_s": size / cold / 1e9,
        "warm_gb_per_s": size / warm / 1e9,
        "fill_gb_per_s": size / fill / 1e9,
        "memcpy_gb_per_s": size / copy / 1e9,
    }


def _plot(path: Path, text: dict[str, float], vec: dict[str, float], read: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(
        ["bare\n(batches)", "ingest_batch", "bare\n(one call)", "ingest_file"],
        [
            text["bare_texts_per_s"],
            text["ingest_texts_per_s"],
            text["file_bare_texts_per_s"],
            text["file_ingest_texts_per_s"],
        ],
        color=["grey", "C0", "grey", "C0"],
    )
    axes[0].set_title(f"text ingest ({text['ratio']:.2f}x, {text['file_ratio']:.2f}x bare)")
    axes[0].set_ylabel("wiki extracts / s")
    axes[1].bar(
        ["Ingestor", "Store.upsert"],
        [vec["ingest_vectors_per_s"], vec["upsert_vectors_per_s"]],
        color=["C0", "C1"],
    )
    axes[1].axhline(100_000, color="red", linestyle="--", label="goal 100k/s")
    axes[1].set_title("precomputed vectors (d=384)")
    axes[1].set_ylabel("vectors / s")
    axes[1].legend()
    labels = ["load\n(cold)", "load\n(warm)", "alloc\n+fill", "alloc\n+memcpy"]
    values = [read["cold_gb_per_s"], read["warm_gb_per_s"], read["fill_gb_per_s"], read["memcpy_gb_per_s"]]
    axes[2].bar(labels, values, color=["C0", "C0", "grey", "grey"])
    axes[2].set_title("bulk read into one array")
    axes[2].set_ylabel("GB / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(
    text: dict[str, float], vec: dict[str, float], read: dict[str, float], quick: bool, seconds: float
) -> str:
    goal_text = "met" if text["ratio"] >= 0.9 else "NOT met"
    goal_file = "met" if text["file_ratio"] >= 0.9 else "NOT met"
    goal_vec = "met" if vec["ingest_vectors_per_s"] >= 100_000 else "NOT met"
    return "\n".join(
        [
            "# Ingest benchmark",
            "",
            f"Machine: {machine()}. Run {'quick (smoke)' if quick else 'full'}, {seconds:.0f} s, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at the end "
            f"{os.getloadavg()[0]:.1f} (the cores are shared, so absolute rates vary from run to run; "
            "each ratio compares paths measured side by side). Generated by `gotd bench ingest`.",
            "",
            "## Text ingest vs bare `SentenceTransformer.encode`",
            "",
            f"{int(text['texts'])} wiki extracts (median {text['median_words']:.0f} words), "
            "all-MiniLM-L6-v2 on CPU, encoder batch size 64. Ingest = each record validated, its text "
            "looked up in the embedding cache (empty), encoded, cached, and each batch written in one LMDB "
            f"transaction. First pair: `ingest_batch` of {PAIR_BATCH}-record batches (the demo client's "
            "batch size) against bare encode of the same batches, alternating batch by batch so that the "
            "load of the shared cores falls on both alike. Second pair: `ingest_file` of JSONL files of "
            f"{int(text['file_texts'])} texts in batches of {TEXT_BATCH} (texts embedded one window ahead, "
            "so one encoder call sorts them all by length) against one bare call over the same texts, "
            "file by file in alternating order. Each ratio is the median over its pairs "
            f"({int(text['pairs'])} and {int(text['file_pairs'])}) of bare time / ingest time, in wall "
            "time and, beside it, in process CPU time (less sensitive to other tenants of the cores).",
            "",
            "| path | texts/s |",
            "|---|---:|",
            "| bare `SentenceTransformer.encode`, same batches (baseline) "
            f"| {text['bare_texts_per_s']:.1f} |",
            f"| gotd `Ingestor.ingest_batch` (what the Ingest RPC runs) | {text['ingest_texts_per_s']:.1f} |",
            f"| **ratio** (goal ≥ 0.9×: {goal_text}) | **{text['ratio']:.2f}×** "
            f"(CPU time {text['cpu_ratio']:.2f}×) |",
            "| bare `SentenceTransformer.encode`, one call per file (baseline) "
            f"| {text['file_bare_texts_per_s']:.1f} |",
            "| gotd `Ingestor.ingest_file` of the same texts as JSONL (`gotd ingest`-style, "
            f"embedding window 2048) | {text['file_ingest_texts_per_s']:.1f} |",
            f"| **ratio** (goal ≥ 0.9×: {goal_file}) | **{text['file_ratio']:.2f}×** "
            f"(CPU time {text['file_cpu_ratio']:.2f}×) |",
            "| re-ingest of the same records (idempotent, nothing encoded) "
            f"| {text['reingest_texts_per_s']:.0f} |",
            "",
            "## Precomputed vectors",
            "",
            f"{int(vec['vectors']):,} unit vectors, d = {DIM}, float32, batches of {VECTOR_BATCH:,} "
            f"(one durable LMDB transaction each); best of {int(vec['rounds'])} rounds into fresh pools.",
            "",
            "| path | vectors/s |",
            "|---|---:|",
            f"| `Ingestor.ingest_batch` (validation, dimension checks, upsert) — goal ≥ 100k/s: {goal_vec} "
            f"| {vec['ingest_vectors_per_s']:,.0f} |",
            f"| `Store.upsert` with the array | {vec['upsert_vectors_per_s']:,.0f} |",
            f"| re-ingest, all unchanged (version not bumped) | {vec['reingest_vectors_per_s']:,.0f} |",
            "| building the `Record`s (parsing/validation, outside ingest) "
            f"| {vec['record_build_per_s']:,.0f} |",
            "",
            "## Bulk read of a pool into one array",
            "",
            f"`Store.load_vectors` of the {read['bytes'] / 1e6:.0f} MB pool above: ids, keys, domains, row "
            "versions and one C-contiguous float32 array, one memcpy per chunk from the LMDB map. Baselines: "
            "allocating and filling a fresh array of the same size (page faults of new memory, the floor of "
            "any read that returns a new array) and allocating plus memcpy from memory.",
            "",
            "| path | GB/s |",
            "|---|---:|",
            f"| `load_vectors`, first read in the process | {read['cold_gb_per_s']:.2f} |",
            f"| `load_vectors`, best of 3 | {read['warm_gb_per_s']:.2f} |",
            f"| baseline: fresh array, fill | {read['fill_gb_per_s']:.2f} |",
            f"| baseline: fresh array, memcpy | {read['memcpy_gb_per_s']:.2f} |",
            "",
            f"![ingest]({NAME}.png)",
            "",
        ]
    )


def run(out_dir: Path, *, quick: bool = False, embedder: Embedder | None = None) -> dict[str, Any]:
    """Run the ingest benchmark; write ``ingest.md`` and ``ingest.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Output directory (created).
    quick : bool
        Tiny smoke version (seconds): 8 texts, 5k vectors.
    embedder : Embedder, optional
        A loaded default embedder to reuse (else one is loaded).

    Returns
    -------
    dict
        ``{"text": {...}, "vectors": {...}, "read": {...}, "report": path}``.
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    embedder = embedder or Embedder()
    with tempfile.TemporaryDirectory(prefix="gotd-bench-ingest-") as tmp:
        work = Path(tmp)
        text = bench_text(embedder, work, 8 if quick else 600)
        text |= bench_text_file(embedder, work, 8 if quick else 600, 1 if quick else 4)
        vec, store = bench_vectors(embedder, work, 5_000 if quick else 100_000, 1 if quick else 5)
        try:
            read = bench_read(store, "vectors0")
        finally:
            store.close()
    seconds = time.perf_counter() - started
    report = out_dir / f"{NAME}.md"
    report.write_text(_report(text, vec, read, quick, seconds), encoding="utf-8")
    _plot(out_dir / f"{NAME}.png", text, vec, read)
    return {"text": text, "vectors": vec, "read": read, "report": str(report)}
