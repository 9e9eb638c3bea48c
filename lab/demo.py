"""``gotd demo``: the main job end to end on the wiki corpus, through a real server and the client.

Starts a server on a free port (in-process dual cache unless GOTD_REDIS_URL is set), ingests a
sample of the wiki summaries as the pool (topic kept in ``meta`` for display only), holds out texts of
one topic as the target set, selects, and prints the top ids with their topics, the target topic's
precision among them against its base rate in the pool, and the time of a cold and a repeated Select.
Embeddings are cached in the data dir, so a second run skips the encoder.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectProgress, SelectSummary
from gotd.lab.corpora.wiki import Doc, load_wiki
from gotd.server.ingest.embedder import Embedder
from gotd.server.service.app import RunningServer, configure_logging, start_server
from gotd.server.service.config import load_settings

TARGET_SIZE = 40


class BackgroundServer:
    """A server running on its own event loop thread (for the demo, benchmarks and tests)."""

    def __init__(self, embedder: Embedder | None = None, **settings: Any) -> None:
        self._settings = load_settings(**settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gotd-server", daemon=True)
        self._thread.start()
        self.running: RunningServer = self.call(start_server(self._settings, embedder=embedder))

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def address(self) -> str:
        return self.running.address

    def stop(self) -> None:
        self.call(self.running.stop(grace=1.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def split_task(
    docs: tuple[Doc, ...], topic: str, pool_size: int, seed: int = 0
) -> tuple[list[Doc], list[Doc]]:
    """Target = ``TARGET_SIZE`` texts of ``topic``; pool = a uniform sample of the rest."""
    rng = random.Random(seed)
    of_topic = [d for d in docs if d.topic == topic]
    if len(of_topic) <= TARGET_SIZE:
        raise ValueError(f"topic {topic!r} has only {len(of_topic)} texts")
    targets = rng.sample(of_topic, TARGET_SIZE)
    chosen = {d.id for d in targets}
    rest = [d for d in docs if d.id not in chosen]
    return rng.sample(rest, min(pool_size, len(rest))), targets


def _timed_select(
    client: Client, pool: str, target: str, k: int, say: Callable[[str], None]
) -> tuple[list[RankedCandidate], SelectSummary, float]:
    started = time.perf_counter()
    ranked: list[RankedCandidate] = []
    summary = None
    for event in client.select_stream(pool, target, k=k, include_metadata=True):
        if isinstance(event, RankedCandidate):
            ranked.append(event)
        elif isinstance(event, SelectProgress) and event.stage == "solve" and event.done % 50 == 0:
            say(f"  solve: iteration {event.done}")
        elif isinstance(event, SelectSummary):
            summary = event
    assert summary is not None  # the server always closes with a summary
    return ranked, summary, time.perf_counter() - started


def say(line: str) -> None:
    """Print a report line at once."""
    print(line, flush=True)


def run_demo(
    *, data_dir: Path, pool_size: int = 1500, topic: str = "Mathematics", k: int = 50
) -> dict[str, Any]:
    """Run the demo and print its report; returns the figures."""
    configure_logging("WARNING", False)
    docs = load_wiki()
    pool_docs, target_docs = split_task(docs, topic, pool_size)
    base_rate = sum(d.topic == topic for d in pool_docs) / len(pool_docs)
    say(f"gotd demo: wiki corpus, {len(docs)} texts in {len({d.topic for d in docs})} topics")
    say(f"pool: {len(pool_docs)} texts; target: {len(target_docs)} held-out texts of topic {topic!r}")
    import os

    with BackgroundServer(
        listen="127.0.0.1:0", data_dir=data_dir, redis_url=os.environ.get("GOTD_REDIS_URL")
    ) as srv:
        say(f"server on {srv.address} (data dir {data_dir})")
        with Client(srv.address, timeout=1800) as client:
            started = time.perf_counter()
            records = ({"id": d.id, "text": d.text, "meta": {"topic": d.topic}} for d in pool_docs)
            result = client.ingest("wiki", records, batch_size=64)
            ingest_s = time.perf_counter() - started
            say(
                f"ingest: {result.inserted} new, {result.unchanged} unchanged, {result.embedded} embedded "
                f"in {ingest_s:.1f}s (pool version {result.info.version})"
            )
            client.put_target_set("wiki-target", [{"id": d.id, "text": d.text} for d in target_docs])
            cold, cold_summary, cold_s = _timed_select(client, "wiki", "wiki-target", k, say)
            warm, warm_summary, warm_s = _timed_select(client, "wiki", "wiki-target", k, say)
    topics = [json.loads(c.meta_json or "{}").get("topic", "?") for c in cold]
    precision = sum(t == topic for t in topics) / len(cold)
    say(f"\ntop {min(10, len(cold))} of {len(cold)} (mode {cold_summary.mode}, eps {cold_summary.eps}):")
    for c, t in list(zip(cold, topics, strict=True))[:10]:
        say(f"  {c.rank:>3}  {c.score:+.5f}  [{t}]  {c.id}")
    say(
        f"\nprecision of {topic!r} in the top {len(cold)}: {precision:.2f} "
        f"(base rate in the pool {base_rate:.3f})"
    )
    say(f"topics in the top {len(cold)}: {dict(Counter(topics).most_common())}")
    say(
        f"cold Select: {cold_s * 1e3:.0f} ms ({cold_summary.iterations} iterations, converged "
        f"{cold_summary.converged}, marginal error {cold_summary.marginal_error:.1e})"
    )
    say(
        f"repeated Select: {warm_s * 1e3:.0f} ms (cache hit {warm_summary.cache_hit}); "
        f"speed-up {cold_s / max(warm_s, 1e-9):.1f}x; "
        f"same ranking: {[c.id for c in cold] == [c.id for c in warm]}"
    )
    return {
        "precision": precision,
        "base_rate": base_rate,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "ingest_s": ingest_s,
        "cache_hit": warm_summary.cache_hit,
        "ranking": [(c.id, c.score) for c in cold],
        "same_ranking": [(c.id, c.score) for c in cold] == [(c.id, c.score) for c in warm],
    }
