"""Prometheus metrics of one server instance, on their own registry (several servers may share a process)."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from gotd.cache.store.embeddings import EmbeddingCache

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


OTHER_POOLS = "_other"
"""The ``pool`` label of the pools past ``max_pools`` (pool names are user input: labels stay bounded)."""


@dataclass
class Metrics:
    """Counters, gauges and histograms exported on ``--metrics-port``.

    Every label set is bounded: methods, codes, stages and events are fixed lists; pools (named by
    users) get their own label up to ``max_pools``, the rest are summed under :data:`OTHER_POOLS`.
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    max_pools: int = 100
    http_address: tuple[str, int] | None = None
    _untracked: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.rpcs = Counter(
            "gotd_rpcs", "RPCs finished, by method and status code", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "gotd_rpc_seconds", "RPC latency", ["method"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("gotd_rpcs_in_flight", "RPCs being served", registry=r)
        self.stage_seconds = Histogram(
            "gotd_stage_seconds", "Time per selection stage", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.solve_iterations = Histogram(
            "gotd_solve_iterations",
            "Sinkhorn iterations per solve",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.cost_validations = Counter(
            "gotd_cost_validations",
            "Cost auto per request: validated, cached (this version), epoch (an earlier version's "
            "validation within the staleness bound), fallback, bypassed, no_sketches",
            ["outcome"],
            registry=r,
        )
        self.cache_events = Counter("gotd_dual_cache_events", "Dual cache events", ["event"], registry=r)
        self.cache_healthy = Gauge(
            "gotd_dual_cache_healthy", "1 when the Redis dual cache answers", registry=r
        )
        self.records = Counter(
            "gotd_ingested_records", "Ingested records, by outcome", ["outcome"], registry=r
        )
        self.embedded_texts = Counter("gotd_embedded_texts", "Texts sent to the encoder", registry=r)
        self.pool_candidates = Gauge("gotd_pool_candidates", "Candidates per pool", ["pool"], registry=r)
        self.snapshot_retries = Counter(
            "gotd_snapshot_retries",
            "Requests that read a newer pool snapshot because the pool changed under them, by step",
            ["step"],
            registry=r,
        )
        self.select_buffered = Gauge(
            "gotd_select_buffered_events", "Select events produced and not yet sent to a client", registry=r
        )
        self.pool_snapshot_bytes = Gauge(
            "gotd_pool_snapshot_bytes", "Bytes of the pool snapshots held in memory", registry=r
        )
        self.blocks_scored = Counter(
            "gotd_blocks_scored", "Row blocks scored (c-transform passes)", registry=r
        )
        self.scoring_passes = Counter(
            "gotd_scoring_passes",
            "Scoring passes: full (every row), incremental (rows written since the epoch's values), "
            "cached (no row), sharded (every row on Ray workers, values kept there)",
            ["kind"],
            registry=r,
        )
        self.rows_scored = Counter("gotd_rows_scored", "Rows put through the c-transform", registry=r)
        self.near_copy_walks = Counter(
            "gotd_near_copy_walks",
            "Near-copy walks: repeat (a kept walk served), graph (an earlier walk's pairs reused, new rows "
            "multiplied), full (every walked row multiplied)",
            ["kind"],
            registry=r,
        )

    def watch_embedding_cache(self, cache: EmbeddingCache) -> None:
        """Export the embedding cache's size and evictions (read from the store at each scrape)."""
        Gauge(
            "gotd_embedding_cache_entries", "Texts whose embedding is cached", registry=self.registry
        ).set_function(lambda: cache.stats().entries)
        Gauge(
            "gotd_embedding_cache_evicted", "Embedding cache entries evicted so far", registry=self.registry
        ).set_function(lambda: cache.stats().evicted)

    def set_pool_size(self, pool: str, count: int) -> None:
        """Record a pool's candidate count under its own label, or under ``_other`` past ``max_pools``."""
        with self._lock:
            tracked = pool != OTHER_POOLS and pool not in self._untracked
            labelled = {labels[0] for labels in self._labelled_pools()}
            if tracked and (pool in labelled or len(labelled - {OTHER_POOLS}) < self.max_pools):
                self.pool_candidates.labels(pool).set(count)
                return
            self._untracked[pool] = count
            self.pool_candidates.labels(OTHER_POOLS).set(sum(self._untracked.values()))

    def forget_pool(self, pool: str) -> None:
        """Drop a deleted pool's label (or its share of ``_other``)."""
        with self._lock:
            if self._untracked.pop(pool, None) is not None:
                self.pool_candidates.labels(OTHER_POOLS).set(sum(self._untracked.values()))
                return
            with contextlib.suppress(KeyError):
                self.pool_candidates.remove(pool)

    def _labelled_pools(self) -> list[tuple[str, ...]]:
        return [
            tuple(k) for k in self.pool_candidates._metrics
        ]  # prometheus-client keeps no public list of children

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP exporter on ``host``; returns the bound port (``0`` picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.http_address = (str(server.server_address[0]), int(server.server_port))
        return int(server.server_port)
