"""gRPC servicer: thin. Proto in → engine (in worker threads) → proto out.

Errors are raised, never aborted here: the boundary interceptor maps them to status codes.
Nothing but moving bytes runs on the event loop: request conversion and validation run on the worker
pool with the store and engine work they feed (so large record lists are also freed there), and large
messages are decoded off the loop (:class:`~gotd.server.service.interceptors.DecodeOffLoop`).
Select is an async generator fed by the engine running in a worker thread through a buffer of at most
``SELECT_BUFFER_EVENTS`` events (backpressure); a cancelled or expired call sets a stop flag the
engine checks between blocks and while it waits for the client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any, TypeVar

from grpc import aio

from gotd.cache.errors import Cancelled, DeadlineExceeded, InvalidArgument, Unavailable
from gotd.cache.records import validate_name
from gotd.cache.store.core import Store, UpsertResult
from gotd.cache.store.embeddings import EmbeddingCache, forget_pool_texts
from gotd.client.types import SelectSummary
from gotd.server.ingest.pipeline import Ingestor
from gotd.server.service import convert
from gotd.server.service.engine import SelectionEngine
from gotd.server.service.requests import RankedBatch, SelectEvent
from gotd.server.service.targets import TargetResolver
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc

LOG = logging.getLogger(__name__)
Ctx = aio.ServicerContext[Any, Any]
T = TypeVar("T")
_DONE = object()
#: Select events produced and not yet sent, per call: the engine waits (a slow client slows the
#: producer) instead of queueing a ranking of millions in memory.
SELECT_BUFFER_EVENTS = 8


class StopFlag:
    """Set when the call is cancelled or its deadline passes; ``check`` raises in the worker."""

    def __init__(self, context: Ctx) -> None:
        self._event = threading.Event()
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining

    def set(self) -> None:
        self._event.set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("the call was cancelled")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise DeadlineExceeded("the call's deadline passed while working")


class SelectionServicer(pb_grpc.SelectionServiceServicer):
    """Implements ``gotd.v1.SelectionService``."""

    def __init__(
        self,
        engine: SelectionEngine,
        store: Store,
        ingestor: Ingestor,
        targets: TargetResolver,
        executor: Executor,
        *,
        max_text_bytes: int,
        embcache: EmbeddingCache | None = None,
    ) -> None:
        self._embcache = embcache
        self._engine = engine
        self._store = store
        self._ingestor = ingestor
        self._targets = targets
        self._executor = executor
        self._max_text_bytes = max_text_bytes
        self.shutting_down = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _ingest_batch(self, pool: str, request: pb.IngestRequest) -> tuple[UpsertResult, int] | None:
        """One batch converted, validated and stored, and the pool's count after it (None: empty).

        Runs on a worker: the records are built and freed there, never on the event loop.
        """
        records = convert.records(request.records, max_text_bytes=self._max_text_bytes)
        if not records:
            return None
        result = self._ingestor.ingest_batch(pool, records)
        return result, self._store.get_pool(pool).live

    def _score(self, request: pb.ScoreRequest, stop: Callable[[], None]) -> pb.ScoreResponse:
        params = convert.score_params(request, max_text_bytes=self._max_text_bytes)
        return convert.score_result(self._engine.score(params, stop))

    def _put_target_set(self, request: pb.PutTargetSetRequest) -> pb.PutTargetSetResponse:
        records = convert.records(request.records, max_text_bytes=self._max_text_bytes)
        info = self._targets.put(request.name, records)
        return pb.PutTargetSetResponse(info=convert.target_set_info(info))

    async def Ingest(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.IngestRequest], context: Ctx
    ) -> pb.IngestResponse:
        pool = ""
        totals = {"inserted": 0, "updated": 0, "unchanged": 0, "embedded": 0}
        batches = 0
        async for request in request_iterator:
            if not pool:
                pool = request.pool
                validate_name(pool)
            elif request.pool and request.pool != pool:
                raise InvalidArgument(
                    f"one Ingest stream takes one pool: got {request.pool!r} after {pool!r}"
                )
            done = await self._run(self._ingest_batch, pool, request)
            if done is None:
                continue
            result, count = done
            for name in totals:
                totals[name] += int(getattr(result, name, 0))
            batches += 1
            self._engine.metrics.set_pool_size(pool, count)
        if not pool:
            raise InvalidArgument("the Ingest stream carried no pool name")
        for outcome in ("inserted", "updated", "unchanged"):
            self._engine.metrics.records.labels(outcome).inc(totals[outcome])
        info = await self._run(self._store.get_pool, pool)
        return pb.IngestResponse(pool=pool, batches=batches, info=convert.pool_info(info), **totals)

    async def Select(  # noqa: N802
        self, request: pb.SelectRequest, context: Ctx
    ) -> AsyncIterator[pb.SelectResponse]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = StopFlag(context)
        slots = threading.Semaphore(SELECT_BUFFER_EVENTS)
        buffered = self._engine.metrics.select_buffered

        def emit(event: SelectEvent) -> None:  # blocks while the client lags SELECT_BUFFER_EVENTS behind
            while not slots.acquire(timeout=0.1):
                stop.check()
            buffered.inc()
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def work() -> None:
            try:
                params = convert.select_params(request, max_text_bytes=self._max_text_bytes)
                self._engine.select(params, emit, stop.check)
            except BaseException as err:
                loop.call_soon_threadsafe(queue.put_nowait, err)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        future = loop.run_in_executor(self._executor, work)
        returned: list[str] = []  # ids sent, recorded into request.record_into before the Summary
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, RankedBatch) and request.record_into:
                    returned.extend(item.ids)
                if isinstance(item, SelectSummary):
                    if request.record_into:
                        item = await self._record(request, returned, stop, item)
                    LOG.info(
                        "select pool=%s k=%d mode=%s cache_hit=%s total_ms=%.1f",
                        request.pool,
                        request.k,
                        item.mode,
                        item.cache_hit,
                        item.total_ms,
                    )
                message = convert.select_event(item)
                buffered.dec()
                slots.release()
                yield message  # returns once gRPC has taken it (HTTP/2 flow control)
        finally:
            stop.set()
            await asyncio.shield(future)
            while not queue.empty():  # events never sent (the call failed or was cancelled)
                left = queue.get_nowait()
                if left is not _DONE and not isinstance(left, BaseException):
                    buffered.dec()

    async def _record(
        self, request: pb.SelectRequest, ids: list[str], stop: StopFlag, summary: SelectSummary
    ) -> SelectSummary:
        """Record the sent ids into ``record_into`` (one write; see :mod:`.idsets`) for the Summary."""
        record = self._engine.id_sets.record
        added, count = await self._run(record, request.pool, request.record_into, ids, stop.check)
        return replace(summary, recorded=added, record_set_count=count)

    async def Score(self, request: pb.ScoreRequest, context: Ctx) -> pb.ScoreResponse:  # noqa: N802
        stop = StopFlag(context)
        try:
            return await self._run(self._score, request, stop.check)
        finally:
            stop.set()

    async def PutTargetSet(  # noqa: N802
        self, request: pb.PutTargetSetRequest, context: Ctx
    ) -> pb.PutTargetSetResponse:
        return await self._run(self._put_target_set, request)

    async def GetTargetSet(  # noqa: N802
        self, request: pb.GetTargetSetRequest, context: Ctx
    ) -> pb.GetTargetSetResponse:
        validate_name(request.name)
        info, ids, _vectors = await self._run(self._store.get_target_set, request.name)
        return pb.GetTargetSetResponse(info=convert.target_set_info(info), ids=list(ids))

    async def DeleteTargetSet(  # noqa: N802
        self, request: pb.DeleteTargetSetRequest, context: Ctx
    ) -> pb.DeleteTargetSetResponse:
        validate_name(request.name)
        await self._run(self._store.delete_target_set, request.name)
        return pb.DeleteTargetSetResponse()

    async def GetPool(self, request: pb.GetPoolRequest, context: Ctx) -> pb.GetPoolResponse:  # noqa: N802
        validate_name(request.name)
        return await self._run(self._get_pool, request.name)

    def _get_pool(self, name: str) -> pb.GetPoolResponse:
        reply = pb.GetPoolResponse(info=convert.pool_info(self._store.get_pool(name)))
        if self._embcache is not None:
            stats = self._embcache.stats()
            reply.embedding_cache.entries = stats.entries
            reply.embedding_cache.max_entries = stats.max_entries
            reply.embedding_cache.evicted = stats.evicted
        return reply

    def _delete_pool(self, name: str) -> None:
        """Delete a pool and the cached embeddings of its texts (they do not outlive it)."""
        if self._embcache is not None:
            forget_pool_texts(self._store, self._embcache, name)
        self._store.delete_pool(name)

    async def ListPools(  # noqa: N802
        self, request: pb.ListPoolsRequest, context: Ctx
    ) -> pb.ListPoolsResponse:
        pools = await self._run(self._store.list_pools)
        return pb.ListPoolsResponse(pools=[convert.pool_info(p) for p in pools])

    async def DeletePool(  # noqa: N802
        self, request: pb.DeletePoolRequest, context: Ctx
    ) -> pb.DeletePoolResponse:
        validate_name(request.name)
        await self._run(self._delete_pool, request.name)
        self._engine.forget_pool(request.name)
        await self._run(self._engine.duals.delete_prefix, request.name)
        self._engine.metrics.forget_pool(request.name)
        return pb.DeletePoolResponse()

    async def PutIdSet(self, request: pb.PutIdSetRequest, context: Ctx) -> pb.PutIdSetResponse:  # noqa: N802
        put = self._engine.id_sets.sets.put
        info, added = await self._run(
            lambda: put(request.pool, request.name, request.ids, append=request.append)
        )
        return pb.PutIdSetResponse(info=convert.id_set_info(info), added=added)

    async def GetIdSet(self, request: pb.GetIdSetRequest, context: Ctx) -> pb.GetIdSetResponse:  # noqa: N802
        page = self._engine.id_sets.page
        info, ids, token = await self._run(
            page, request.pool, request.name, request.page_size, request.page_token
        )
        return pb.GetIdSetResponse(info=convert.id_set_info(info), ids=ids, next_page_token=token)

    async def DeleteIdSet(  # noqa: N802
        self, request: pb.DeleteIdSetRequest, context: Ctx
    ) -> pb.DeleteIdSetResponse:
        await self._run(self._engine.id_sets.sets.delete, request.pool, request.name)
        return pb.DeleteIdSetResponse()

    async def ListIdSets(  # noqa: N802
        self, request: pb.ListIdSetsRequest, context: Ctx
    ) -> pb.ListIdSetsResponse:
        sets = await self._run(self._engine.id_sets.sets.list, request.pool)
        return pb.ListIdSetsResponse(sets=[convert.id_set_info(s) for s in sets])

    async def DeleteRecords(  # noqa: N802
        self, request: pb.DeleteRecordsRequest, context: Ctx
    ) -> pb.DeleteRecordsResponse:
        validate_name(request.pool, kind="pool")
        result = await self._run(self._store.delete_records, request.pool, list(request.ids))
        info = await self._run(self._store.get_pool, request.pool)
        self._engine.metrics.set_pool_size(request.pool, info.live)
        return pb.DeleteRecordsResponse(
            pool=request.pool,
            deleted=result.deleted,
            not_found=result.not_found,
            info=convert.pool_info(info),
        )
