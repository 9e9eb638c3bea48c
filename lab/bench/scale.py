"""``gotd bench scale``: pools of millions of precomputed embeddings on one machine (issue 15).

A real ``gotd serve`` process (float16 pools, in-process dual cache) on 127.0.0.1 and the Python
client for the Selects (started with ``GOTD_MODEL_PRELOAD=false``: every record and target
carries its embedding, so the encoder is never loaded; the idle RSS is reported); the pools are
written into the same LMDB store by this process through the server's own ingest path
(:class:`~gotd.server.ingest.pipeline.Ingestor`, validation, sketching of texts and one transaction
per batch; the gRPC transport of millions of embeddings as protobuf
floats is not what is measured). Pools of clustered synthetic unit vectors grow 1M -> 3M (-> 10M
when the free memory and the per-process budget allow, checked with psutil first); a 1M pool with
texts made of word spans of the wiki corpus (sketches like real ones, one topic per cluster)
measures the fused cost. 1k targets. Measured: ingest rate, cold Select (load + solve + score),
cached Select (dual-cache hit), peak server RSS during a Select against the pool's stored bytes,
and the time per candidate as n grows. Written to docs/benchmarks/scale.md with a plot; every ratio
is between runs of the same invocation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.layout import pool_chunks
from gotd.cache.store.read import require_pool
from gotd.cache.store.sketch_codec import entry_counts
from gotd.client.client import Client
from gotd.client.types import SelectSummary
from gotd.lab.bench import scale_report
from gotd.lab.bench.util import machine
from gotd.server.ingest.embedder import Embedder
from gotd.server.ingest.pipeline import Ingestor
from gotd.server.selection.sketches import tf_sparse

DIM = 384
CENTERS = 16
BATCH = 10_000
MODEL = "all-MiniLM-L6-v2"  # the server's model id, so its stored target sets match the pools
#: Memory one process of this shared machine may take (the server holding the largest pool); a run on
#: a quiet machine may raise it with GOTD_BENCH_SCALE_BUDGET_GIB.
PROCESS_BUDGET = 4 << 30
_WORDS_PER_TEXT = 40


class _NoEncoder:
    """Stands for the server's encoder when every record carries its embedding (never encodes)."""

    model_id = MODEL
    dim = DIM
    encoded = 0

    def encode(self, texts: Any) -> np.ndarray:
        raise AssertionError("the scale benchmark sends embeddings only")


class RssSampler:
    """Samples a process's memory every ``interval`` seconds on a thread; peaks since the last reset.

    Two figures: the RSS, and its anonymous part (RSS less file-backed and shared pages: the LMDB
    memory map's pages the process touched count in its RSS but are page cache the kernel reclaims).
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval
        self._peak = self._peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[int, int]:
        info = self._proc.memory_info()
        return int(info.rss), int(info.rss - getattr(info, "shared", 0))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                rss, anon = self._sample()
            except psutil.Error:
                return
            self._peak, self._peak_anon = max(self._peak, rss), max(self._peak_anon, anon)

    def reset(self) -> int:
        rss, self._peak_anon = self._sample()
        self._peak = rss
        return rss

    def peak(self) -> int:
        return max(self._peak, self._sample()[0])

    def peak_anon(self) -> int:
        return max(self._peak_anon, self._sample()[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Server:
    """``gotd serve`` in a child process (float16 pools), stopped on exit."""

    def __init__(self, data_dir: Path) -> None:
        env = {"GOTD_VECTOR_DTYPE": "float16", "GOTD_LOG_LEVEL": "WARNING", "PATH": "/usr/bin:/bin"}
        env["GOTD_MODEL_PRELOAD"] = "false"  # every record and target carries its embedding
        cmd = [sys.executable, "-m", "gotd.client.cli", "serve", "--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [*cmd, "--data-dir", str(data_dir)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait(timeout=60)
            self.proc.stdout.close()
            raise RuntimeError(f"gotd serve did not start: {line!r}")
        self.address = line.rsplit(" ", 1)[1].strip()
        self.rss = RssSampler(self.proc.pid)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.rss.close()
        self.proc.terminate()
        self.proc.wait(timeout=60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _centres() -> np.ndarray:
    c = np.random.default_rng(0).standard_normal((CENTERS, DIM)).astype(np.float32)
    out: np.ndarray = c / np.linalg.norm(c, axis=1, keepdims=True)
    return out


def _vectors(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((len(labels), DIM)).astype(np.float32) * (0.35 / np.sqrt(DIM))
    x = _centres()[labels] + noise
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class Texts:
    """Word spans of the wiki corpus, one topic per cluster, so a cluster's sketches share words."""

    def __init__(self) -> None:
        from gotd.lab.corpora.wiki import load_wiki

        by_topic: dict[str, list[str]] = {}
        for doc in load_wiki():
            by_topic.setdefault(doc.topic, []).extend(doc.text.split())
        topics = sorted(by_topic, key=lambda t: -len(by_topic[t]))
        self.words = [np.array(by_topic[topics[c % len(topics)]], dtype=object) for c in range(CENTERS)]

    def of(self, labels: np.ndarray, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        out = []
        for c in labels.tolist():
            words = self.words[c]
            at = int(rng.integers(0, len(words) - _WORDS_PER_TEXT))
            out.append(" ".join(words[at : at + _WORDS_PER_TEXT]))
        return out


def _batches(start: int, stop: int, texts: Texts | None) -> Iterator[list[Record]]:
    """Rows ``start:stop`` of the synthetic pool in batches (generated per batch, never held whole)."""
    for lo in range(start, stop, BATCH):
        hi = min(stop, lo + BATCH)
        labels = np.random.default_rng(lo + 1).integers(0, CENTERS, hi - lo)
        x = _vectors(labels, lo + 2)
        words = texts.of(labels, lo + 3) if texts is not None else [None] * (hi - lo)
        yield [Record(id=f"c{lo + i:08d}", embedding=x[i], text=words[i]) for i in range(hi - lo)]


def _targets(m: int, texts: Texts | None) -> list[dict[str, Any]]:
    labels = np.arange(m) % 2  # two of the sixteen clusters
    x = _vectors(labels, 99)
    words = texts.of(labels, 98) if texts is not None else None
    return [
        {"id": f"t{j}", "embedding": x[j].tolist(), **({"text": words[j]} if words is not None else {})}
        for j in range(m)
    ]


def _select(server: Server, client: Client, pool: str, targets: str, cost: str) -> dict[str, Any]:
    base = server.rss.reset()
    started = time.perf_counter()
    summary = None
    for event in client.select_stream(pool, targets, k=1000, mode="global", cost=cost):
        if isinstance(event, SelectSummary):
            summary = event
    seconds = time.perf_counter() - started
    assert summary is not None
    return {
        "seconds": seconds,
        "rss_before": base,
        "rss_peak": server.rss.peak(),
        "anon_peak": server.rss.peak_anon(),
        "timings_ms": {
            "load": summary.load_ms,
            "solve": summary.solve_ms,
            "score": summary.score_ms,
            "total": summary.total_ms,
        },
        "cache_hit": summary.cache_hit,
        "cost": summary.cost,
        "converged": summary.converged,
    }


def _estimated_bytes(n: int, texts: bool) -> int:
    """Bytes of a pool's rows before it is written (for :func:`_fits`): float16 vectors, and for texts
    at most a quarter of the sketch buckets set (~0.1 here) at 4 bytes an entry."""
    return n * (DIM * 2 + (8 + 1024 if texts else 0))


def _pool_bytes(store: Store, pool: str) -> dict[str, int]:
    """The pool's rows as stored (the vector and sketch chunks in LMDB, sparse sketches as written) and
    as a snapshot holds them (float16 vectors; sketches in compact sparse form: an 8-byte row pointer,
    4 bytes an entry), and the dense float16 sketch rows snapshots held before (for comparison)."""

    def read(txn: Any) -> dict[str, int]:
        dbs = store.env.dbs
        record = require_pool(txn, dbs, pool)
        vectors = sum(len(v) for _c, v in pool_chunks(txn, dbs["vectors"], record.prefix))
        sketch_bytes = entries = 0
        if record.sketch_buckets and dbs.get("sketches") is not None:
            for _c, value in pool_chunks(txn, dbs["sketches"], record.prefix):
                sketch_bytes += len(value)
                entries += int(entry_counts(value, record.sketch_buckets).sum())
        snapshot = vectors + (8 * record.count + 4 * entries if sketch_bytes else 0)
        dense = vectors + (2 * record.sketch_buckets * record.count if sketch_bytes else 0)
        return {
            "stored_bytes": vectors + sketch_bytes,
            "snapshot_bytes": snapshot,
            "dense_snapshot_bytes": dense,
            "sketch_entries": entries,
        }

    found: dict[str, int] = store.env.read(read, buffers=True)
    return found


def _measure(
    server: Server, client: Client, store: Store, pool: str, n: int, texts: bool, costs: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {"pool": pool, "n": n, "texts": texts, **_pool_bytes(store, pool)}
    targets = f"{pool}-targets"
    for cost in costs:
        cold = _select(server, client, pool, targets, cost)
        again = [_select(server, client, pool, targets, cost) for _ in range(2)]
        cached = min(again, key=lambda r: float(r["seconds"]))
        out[cost] = {"cold": cold, "cached": cached}
    return out


def _ingest(ingestor: Ingestor, pool: str, start: int, stop: int, texts: Texts | None) -> dict[str, Any]:
    """Ingest rows ``start:stop``; the clock runs only around ``ingest_batch`` (not the generation)."""
    seconds = 0.0
    for batch in _batches(start, stop, texts):
        started = time.perf_counter()
        ingestor.ingest_batch(pool, batch)
        seconds += time.perf_counter() - started
    return {"rows": stop - start, "seconds": seconds, "rate": (stop - start) / seconds}


def _fits(n: int, texts: bool) -> tuple[bool, float, float]:
    """Whether the server can hold a pool of ``n``: (fits, need GiB, allowed GiB).

    Need: the snapshot (stored rows, ids, keys) plus a Select's working set; allowed: the smaller of
    the per-process budget and the machine's available memory less 2 GiB for everyone else.
    """
    need = _estimated_bytes(n, texts) + n * 150 + (1 << 30)  # + ids, keys, scores; + the process itself
    budget = float(os.environ.get("GOTD_BENCH_SCALE_BUDGET_GIB", PROCESS_BUDGET / 2**30)) * 2**30
    allowed = min(budget, float(psutil.virtual_memory().available) - (2 << 30))
    return need <= allowed, need / 2**30, allowed / 2**30


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Run the scale benchmark and write ``scale.md`` (+ ``scale.png``) into ``out_dir``."""
    sizes = [20_000, 60_000] if quick else [1_000_000, 3_000_000, 10_000_000]
    fused_n = 20_000 if quick else 1_000_000
    if os.environ.get("GOTD_BENCH_SCALE_SIZES"):  # e.g. "250000,1000000": a shorter run, said in the report
        sizes = [int(v) for v in os.environ["GOTD_BENCH_SCALE_SIZES"].split(",")]
    fused_n = int(os.environ.get("GOTD_BENCH_SCALE_FUSED", fused_n))
    m = 100 if quick else 1000
    host = machine()
    results: dict[str, Any] = {"machine": host, "m": m, "sizes": [], "skipped": [], "ingest": []}
    results["budget_gib"] = float(os.environ.get("GOTD_BENCH_SCALE_BUDGET_GIB", PROCESS_BUDGET / 2**30))
    texts = Texts()
    with tempfile.TemporaryDirectory(prefix="gotd-scale-") as tmp:
        data = Path(tmp) / "data"
        with Store(data, sketcher=tf_sparse, vector_dtype="float16") as store:
            ingestor = Ingestor(store, cast(Embedder, _NoEncoder()), None)
            with Server(data) as server, Client(server.address, timeout=3600) as client:
                results["rss_idle"] = server.rss.reset()
                client.put_target_set("emb-targets", _targets(m, None))
                done = 0
                for n in sizes:
                    fits, need, allowed = _fits(n, texts=False)
                    if not fits:
                        skip = {"n": n, "need_gib": need, "allowed_gib": allowed, "what": "embedding"}
                        results["skipped"].append(skip)
                        continue
                    results["ingest"].append({"kind": "vectors", **_ingest(ingestor, "emb", done, n, None)})
                    done = n
                    results["sizes"].append(_measure(server, client, store, "emb", n, False, ("embedding",)))
                client.delete_pool("emb")
            fits, need, allowed = _fits(fused_n, texts=True)
            if not fits:
                skip = {"n": fused_n, "need_gib": need, "allowed_gib": allowed, "what": "fused"}
                results["skipped"].append(skip)
            else:  # a fresh server: its memory holds nothing of the series above
                kind = {"kind": "vectors+texts", **_ingest(ingestor, "txt", 0, fused_n, texts)}
                results["ingest"].append(kind)
                with Server(data) as server, Client(server.address, timeout=3600) as client:
                    results["rss_idle_fused"] = server.rss.reset()
                    client.put_target_set("txt-targets", _targets(m, texts))
                    results["fused"] = _measure(
                        server, client, store, "txt", fused_n, True, ("embedding", "fused")
                    )
    results["load_end"] = psutil.getloadavg()[0]
    scale_report.write(out_dir, results, quick=quick)
    return results
