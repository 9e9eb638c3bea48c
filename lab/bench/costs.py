"""The cost comparison of ``gotd bench service``: fused cost vs embedding cost, side by side.

Pools and targets are synthetic records with BOTH a text and a precomputed embedding (the server
uses the embedding as given and still stores the text's n-gram sketch), so no encoder runs. Each
record belongs to one of the wiki corpus's topics: its embedding is a unit vector scattered around
the topic's random direction, and its text is 4 to 15 spans of 8 consecutive words drawn from that
topic's wiki summaries (32 to 120 words), so the n-grams carry the same topic signal as the
embeddings. Targets come from 3 of the topics (a second target set from 3 others).

Every cost gets its own pool with the same records, ingested up front, so the first Select of
either cost is the first on its pool version. Per cost: the cold Select (pool load, fused rows
built, solve, score), the cached Select (dual-cache hit; named target set and inline records), and
a second cold Select with the other target set on the same pool version (fused rows already built:
the steady-state solve + score). Also the ingest cost of sketching: the same records upserted into
a :class:`~gotd.cache.store.core.Store` opened with and without ``sketcher=tf_sparse``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.client.client import Client
from gotd.lab.bench.util import rss_mb
from gotd.lab.corpora.wiki import load_wiki
from gotd.server.selection.sketches import tf_sparse

COSTS = ("embedding", "fused")
DIM = 384
SPAN = 8
SPANS = (4, 15)
TARGET_TOPICS = ((0, 1, 2), (3, 4, 5))
STORE_BATCH = 2000


@dataclass(frozen=True)
class Synthetic:
    """Topic-structured synthetic records: wiki words per topic and one direction per topic."""

    vocab: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    centers: np.ndarray

    @classmethod
    def from_wiki(cls, seed: int = 0) -> Synthetic:
        """Words of each wiki topic (topics sorted by name) and a random unit direction per topic."""
        docs = load_wiki()
        topics = sorted({d.topic for d in docs})
        index: dict[str, int] = {}
        parts: list[np.ndarray] = []
        for topic in topics:
            words = " ".join(d.text for d in docs if d.topic == topic).split()
            parts.append(np.fromiter((index.setdefault(w, len(index)) for w in words), np.int64, len(words)))
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((len(topics), DIM)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        return cls(
            vocab=np.array(list(index), dtype=object),
            tokens=np.concatenate(parts),
            offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
            sizes=sizes,
            centers=centers,
        )

    @property
    def topics(self) -> int:
        return len(self.sizes)

    def make(
        self, n: int, *, seed: int, topics: Sequence[int] | None = None, spread: float = 0.35
    ) -> tuple[np.ndarray, list[str]]:
        """``n`` unit embeddings (float32) and texts, each record of one topic drawn from ``topics``."""
        rng = np.random.default_rng(seed)
        labels = rng.choice(np.asarray(topics if topics is not None else range(self.topics)), n)
        noise = rng.standard_normal((n, DIM)).astype(np.float32) * np.float32(spread / np.sqrt(DIM))
        x = self.centers[labels] + noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        spans = rng.integers(SPANS[0], SPANS[1] + 1, n)
        of_span = np.repeat(labels, spans)
        starts = self.offsets[of_span] + (rng.random(len(of_span)) * (self.sizes[of_span] - SPAN)).astype(
            np.int64
        )
        words = self.vocab[self.tokens[starts[:, None] + np.arange(SPAN)]]
        pieces = [" ".join(row) for row in words]
        ends = np.cumsum(spans)
        texts = [" ".join(pieces[e - s : e]) for s, e in zip(spans.tolist(), ends.tolist(), strict=True)]
        return x.astype(np.float32), texts


def text_records(x: np.ndarray, texts: list[str], prefix: str) -> Iterator[dict[str, Any]]:
    """Ingest records with both a text (sketched by the server) and a precomputed embedding."""
    for i, text in enumerate(texts):
        yield {"id": f"{prefix}{i:07d}", "text": text, "embedding": x[i].tolist()}


def _select(
    client: Client, pool: str, targets: str | list[dict[str, Any]], k: int, cost: str
) -> dict[str, Any]:
    started = time.perf_counter()
    _, s = client.select(pool, targets, k=k, mode="auto", cost=cost)
    wall = time.perf_counter() - started
    other = s.total_ms - s.embed_ms - s.load_ms - s.solve_ms - s.score_ms
    return {
        "s": wall,
        "cost": s.cost,
        "mode": s.mode,
        "cache_hit": s.cache_hit,
        "iterations": s.iterations,
        "total_ms": s.total_ms,
        "targets_ms": s.embed_ms,
        "load_ms": s.load_ms,
        "solve_ms": s.solve_ms,
        "score_ms": s.score_ms,
        "other_ms": other,
    }


def _fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: float(r["s"])))
    best["cache_hit"] = all(r["cache_hit"] for r in runs)
    return best


def scenario(client: Client, data: Synthetic, name: str, n: int, m: int, rounds: int) -> dict[str, Any]:
    """One pool size: both costs' pools ingested, then cold, cached and steady Selects per cost."""
    k = max(1, n // 20)
    x, texts = data.make(n, seed=11)
    rss: list[tuple[str, float, float]] = [("records generated", *rss_mb())]
    ingest: dict[str, float] = {}
    for cost in COSTS:
        started = time.perf_counter()
        client.ingest(f"{name}-{cost}", text_records(x, texts, "c"), batch_size=STORE_BATCH)
        ingest[cost] = n / (time.perf_counter() - started)
    rss.append(("both pools ingested", *rss_mb()))
    inline: list[list[dict[str, Any]]] = []
    for i, topics in enumerate(TARGET_TOPICS):
        tx, tt = data.make(m, seed=20 + i, topics=topics)
        inline.append(list(text_records(tx, tt, f"t{i}-")))
        client.put_target_set(f"{name}-targets{i}", inline[-1])
    pools = {cost: f"{name}-{cost}" for cost in COSTS}
    result: dict[str, Any] = {"scenario": name, "n": n, "m": m, "k": k, "ingest_records_per_s": ingest}
    result["cold"] = {c: _select(client, pools[c], f"{name}-targets0", k, c) for c in COSTS}
    rss.append(("cold Selects", *rss_mb()))
    cached: dict[str, list[dict[str, Any]]] = {c: [] for c in COSTS}
    cached_inline: dict[str, list[dict[str, Any]]] = {c: [] for c in COSTS}
    for _ in range(rounds):
        for c in COSTS:
            cached[c].append(_select(client, pools[c], f"{name}-targets0", k, c))
            cached_inline[c].append(_select(client, pools[c], inline[0], k, c))
    result["cached"] = {c: _fastest(cached[c]) for c in COSTS}
    result["cached_inline"] = {c: _fastest(cached_inline[c]) for c in COSTS}
    result["auto"] = _select(client, pools["fused"], f"{name}-targets0", k, "auto")
    rss.append(("cached Selects", *rss_mb()))
    result["steady"] = {c: _select(client, pools[c], f"{name}-targets1", k, c) for c in reversed(COSTS)}
    rss.append(("steady Selects", *rss_mb()))
    result["rss"] = rss
    result["ratios"] = {
        phase: result[phase]["fused"]["s"] / result[phase]["embedding"]["s"]
        for phase in ("cold", "cached", "cached_inline", "steady")
    }
    for cost in COSTS:
        client.delete_pool(pools[cost])
    return result


def store_ingest(data: Synthetic, n: int, rounds: int) -> dict[str, float]:
    """``Store.upsert`` of the same text + embedding records without and with ``sketcher=tf_sparse``.

    Batches of ``STORE_BATCH`` records (one durable transaction each) into a fresh pool per round,
    the two stores in alternating order; best round of each.
    """
    x, texts = data.make(n, seed=31)
    records = [Record(id=f"c{i:07d}", text=t, embedding=x[i]) for i, t in enumerate(texts)]
    best = {"plain": float("inf"), "sketched": float("inf")}
    with (
        tempfile.TemporaryDirectory(prefix="gotd-bench-costs-") as tmp,
        Store(Path(tmp) / "plain") as plain,
        Store(Path(tmp) / "sketched", sketcher=tf_sparse) as sketched,
    ):
        stores = [("plain", plain), ("sketched", sketched)]
        for r in range(rounds):
            for key, store in stores if r % 2 == 0 else stores[::-1]:
                started = time.perf_counter()
                for s in range(0, n, STORE_BATCH):
                    store.upsert(f"round{r}", records[s : s + STORE_BATCH], model="bench", dim=DIM)
                best[key] = min(best[key], time.perf_counter() - started)
    started = time.perf_counter()
    tf_sparse(texts)
    sketch_only = time.perf_counter() - started
    return {
        "records": float(n),
        "rounds": float(rounds),
        "median_words": float(np.median([len(t.split()) for t in texts])),
        "plain_per_s": n / best["plain"],
        "sketched_per_s": n / best["sketched"],
        "slowdown": best["sketched"] / best["plain"],
        "tf_sparse_per_s": n / sketch_only,
    }


def run(client: Client, *, quick: bool) -> dict[str, Any]:
    """The cost comparison on a running server: scenarios, then the store-level ingest comparison."""
    data = Synthetic.from_wiki()
    sizes = [("exact", 1000, 50)] if quick else [("exact", 20000, 500), ("global", 100000, 1000)]
    rounds = 2 if quick else 3
    scenarios = [scenario(client, data, f"costs-{name}", n, m, rounds) for name, n, m in sizes]
    store = store_ingest(data, 500 if quick else 20000, 1 if quick else 2)
    return {"scenarios": scenarios, "store_ingest": store}
