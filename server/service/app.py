"""Server assembly and lifecycle: load the model and the store, then open the port; stop gracefully.

A connected client never meets a half-started server: settings are validated, the model loaded and
the store opened before ``server.start()``. Health has one name per dependency: ``""`` (overall),
``gotd.v1.SelectionService`` and ``gotd.dual_cache`` (NOT_SERVING while Redis fails; the overall
status stays SERVING because gotd recomputes without it). SIGTERM → NOT_SERVING, then stop with grace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from gotd.cache.duals.cache import DualCache
from gotd.cache.store.core import Store
from gotd.cache.store.embeddings import EmbeddingCache
from gotd.cache.store.idsets import IdSets
from gotd.server.ingest.embedder import Embedder
from gotd.server.ingest.pipeline import Ingestor
from gotd.server.selection.sketches import tf_sparse
from gotd.server.service.allocator import bound_heap
from gotd.server.service.config import Settings
from gotd.server.service.engine import SelectionEngine
from gotd.server.service.interceptors import AuthInterceptor, BoundaryInterceptor, DecodeOffLoop
from gotd.server.service.metrics import Metrics
from gotd.server.service.servicer import SelectionServicer
from gotd.server.service.targets import TargetResolver
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc

LOG = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SelectionService"].full_name
CACHE_HEALTH = "gotd.dual_cache"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class RunningServer:
    """A started server and what tests and the CLI need to reach it."""

    server: aio.Server
    port: int
    settings: Settings
    health: HealthServicer
    servicer: SelectionServicer
    engine: SelectionEngine
    store: Store
    duals: DualCache
    executor: ThreadPoolExecutor
    metrics: Metrics
    embedder: Embedder
    metrics_port: int | None = None
    watcher: asyncio.Task[None] | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        host = self.settings.host_port[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new work, let in-flight RPCs finish within ``grace``, close."""
        if self._stopped:
            return
        self._stopped = True
        self.servicer.shutting_down = True
        if self.watcher is not None:
            self.watcher.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        """Join the workers and close the caches and the store (blocking: run off the event loop)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.duals.close()
        self.store.close()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def start_server(settings: Settings, *, embedder: Embedder | None = None) -> RunningServer:
    """Build and start a server from validated settings; returns once it accepts calls."""
    loop = asyncio.get_running_loop()
    bound_heap()  # a Select's freed blocks leave the resident set (allocator.py)
    metrics = Metrics(max_pools=settings.metrics_max_pools)
    if settings.plaintext_token:
        LOG.warning(
            "a bearer token is accepted over plaintext gRPC on %s: anyone on the path can read it; "
            "set tls_cert and tls_key, or terminate TLS in a trusted proxy",
            settings.listen,
        )
    health = HealthServicer()
    embedder = embedder or Embedder(
        settings.model_path,
        device=settings.device,
        batch_size=settings.embed_batch_size,
        preload=settings.model_preload,
    )
    store = Store(settings.data_dir, sketcher=tf_sparse, vector_dtype=settings.vector_dtype)
    embcache = EmbeddingCache(store, max_entries=settings.embedding_cache_entries)
    metrics.watch_embedding_cache(embcache)

    def cache_health(ok: bool) -> None:
        metrics.cache_healthy.set(1 if ok else 0)
        status = _SERVING if ok else _NOT_SERVING
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(health.set(CACHE_HEALTH, status)))

    duals = DualCache(
        settings.redis_url,
        prefix=settings.redis_prefix,
        ttl_seconds=settings.cache_ttl_seconds,
        timeout_seconds=settings.redis_timeout_seconds,
        lru_entries=settings.cache_lru_entries,
        events=lambda event: metrics.cache_events.labels(event).inc(),
        on_health_change=cache_health,
    )
    targets = TargetResolver(store, embedder, embcache, max_targets=settings.max_inline_targets)
    ingestor = Ingestor(store, embedder, embcache)
    id_sets = IdSets(store.env, max_ids=settings.max_id_set_ids)
    if settings.ray_address is not None:
        from gotd.server.ray.backend import RayScorer

        scorer = RayScorer(settings.ray_address)
        engine = SelectionEngine(settings, store, targets, duals, metrics, scorer=scorer, id_sets=id_sets)
    else:
        engine = SelectionEngine(settings, store, targets, duals, metrics, id_sets=id_sets)
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="gotd-worker")
    servicer = SelectionServicer(
        engine, store, ingestor, targets, executor, max_text_bytes=settings.max_text_bytes, embcache=embcache
    )
    interceptors: list[aio.ServerInterceptor[Any, Any]] = [
        BoundaryInterceptor(metrics, settings.max_concurrent_rpcs)
    ]
    if settings.auth_token is not None:
        interceptors.append(AuthInterceptor(settings.auth_token.get_secret_value()))
    interceptors.append(DecodeOffLoop())  # innermost: it decodes what the servicer receives
    server = aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ],
    )
    pb_grpc.add_SelectionServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    credentials = _credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    metrics_port = (
        metrics.serve(settings.metrics_port, settings.metrics_host)
        if settings.metrics_port is not None
        else None
    )
    await server.start()
    await health.set("", _SERVING)
    await health.set(SERVICE_NAME, _SERVING)
    cache_ok = duals.healthy
    metrics.cache_healthy.set(1 if cache_ok else 0)
    await health.set(CACHE_HEALTH, _SERVING if cache_ok else _NOT_SERVING)
    LOG.info("gotd listening on port %d (model %s, dual cache %s)", port, embedder.model_id, duals.backend)
    watcher = None
    if settings.redis_url is not None:
        watcher = asyncio.create_task(_watch_cache(duals, settings.cache_check_seconds))
    return RunningServer(
        server,
        port,
        settings,
        health,
        servicer,
        engine,
        store,
        duals,
        executor,
        metrics,
        embedder,
        metrics_port,
        watcher,
    )


async def _watch_cache(duals: DualCache, interval: float) -> None:
    """Ping Redis every ``interval`` seconds so its health follows it without traffic."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        await loop.run_in_executor(None, duals.check)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, as_json: bool) -> None:
    """Logs to stderr: plain text, or one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_JsonFormatter() if as_json else logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)


async def serve(settings: Settings, *, ready: Any = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully. ``ready(running)`` is called once serving."""
    # Workers convert records in Python while the event loop answers calls: a 1 ms GIL switch
    # interval (default 5 ms) keeps health checks during a 64 MiB Ingest at p99 86 ms instead of
    # 259 ms on the 2-core test machine (docs/reliability.md). Only `gotd serve` sets it: the process is
    # the server's own.
    sys.setswitchinterval(0.001)
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(running)
    try:
        await stop.wait()
        LOG.info("shutting down (grace %.1fs)", settings.grace_seconds)
    finally:
        await running.stop()
