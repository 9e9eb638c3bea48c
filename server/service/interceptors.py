"""The server interceptors: the RPC boundary (errors → status codes, metrics), bearer-token auth and
decoding of large requests off the event loop.

:class:`BoundaryInterceptor` is the only place where exceptions become gRPC statuses: a
:class:`~gotd.cache.errors.GotdError` maps to its code with its safe message; anything else is a bug,
answered with INTERNAL, a generic message and an error id that is logged with the traceback. It wraps
unary and streaming handlers alike, so streams cannot escape it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from gotd.cache.errors import GotdError, InvalidArgument, ResourceExhausted, Unauthenticated
from gotd.server.service.metrics import Metrics

LOG = logging.getLogger(__name__)
Ctx = aio.ServicerContext[Any, Any]

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
_Around = Callable[[Any, Ctx, str], Any]
HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _rebuild(handler: Handler, unary: Any, stream: Any, *, raw_requests: bool = False) -> Handler:
    """Return ``handler`` with its behaviour replaced by ``unary`` or ``stream`` (same call shape).

    ``raw_requests``: grpc hands the new behaviour the request bytes (no deserializer).
    """
    kwargs = {
        "request_deserializer": None if raw_requests else handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kwargs)


class BoundaryInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps errors to status codes and records per-RPC metrics, for unary and streaming RPCs.

    Also admits at most ``max_concurrent_rpcs`` RPCs at once (health excepted): the excess gets
    RESOURCE_EXHAUSTED at once. The slot is freed before the status is sent, so a client that waits
    for its call to end is never refused (grpc's own limiter frees it only after the call ended).
    """

    def __init__(self, metrics: Metrics, max_concurrent_rpcs: int | None = None) -> None:
        self._metrics = metrics
        self._limit = max_concurrent_rpcs
        self._active = 0

    async def intercept_service(
        self, continuation: _Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return handler
        method = details.method.rsplit("/", 1)[-1]
        limited = self._limit is not None and not details.method.startswith(HEALTH_PREFIX)
        return _rebuild(handler, self._unary(method, limited), self._stream(method, limited))

    def _unary(self, method: str, limited: bool) -> Callable[[Any], Any]:
        def wrap(behavior: Any) -> Any:
            async def call(request: Any, context: Ctx) -> Any:
                async with self._boundary(method, limited, context):
                    return await behavior(request, context)

            return call

        return wrap

    def _stream(self, method: str, limited: bool) -> Callable[[Any], Any]:
        def wrap(behavior: Any) -> Any:
            async def call(request: Any, context: Ctx) -> AsyncIterator[Any]:
                async with self._boundary(method, limited, context):
                    async for item in behavior(request, context):
                        yield item

            return call

        return wrap

    @asynccontextmanager
    async def _boundary(self, method: str, limited: bool, context: Ctx) -> AsyncIterator[None]:
        """One call of ``method``: its admission, its metrics, and its error as a status."""
        started = self._start()
        admitted = finished = False
        try:
            admitted = self._admit(limited)
            yield
        except BaseException as err:
            # counted and the slot freed before the abort sends the status (and raises)
            self._finish(method, _code_of(err, context), started, admitted)
            finished = True
            await self._fail(err, context, method)
            raise
        finally:
            if not finished:
                self._finish(method, "OK", started, admitted)

    def _start(self) -> float:
        self._metrics.in_flight.inc()
        return time.perf_counter()

    def _admit(self, limited: bool) -> bool:
        """Take a slot (event-loop thread only) or raise ResourceExhausted; False when not limited."""
        if not limited or self._limit is None:
            return False
        if self._active >= self._limit:
            raise ResourceExhausted(
                f"the server is at its limit of {self._limit} concurrent RPCs; retry later"
            )
        self._active += 1
        return True

    def _finish(self, method: str, code: str, started: float, admitted: bool) -> None:
        if admitted:
            self._active -= 1
        self._metrics.in_flight.dec()
        self._metrics.rpcs.labels(method, code).inc()
        self._metrics.rpc_seconds.labels(method).observe(time.perf_counter() - started)

    async def _fail(self, err: BaseException, context: Ctx, method: str) -> None:
        """Abort the call with the status ``err`` maps to (the abort raises); nothing for an abort or a
        cancellation already under way."""
        if isinstance(err, GotdError):
            LOG.info("%s failed: %s: %s", method, err.code, err.message)
            await context.abort(grpc.StatusCode[err.code], err.message)
        if isinstance(err, aio.AbortError) or not isinstance(err, Exception):
            return
        error_id = uuid.uuid4().hex[:12]
        LOG.error("%s: internal error %s", method, error_id, exc_info=err)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); see server logs")


def _code_of(err: BaseException, context: Ctx) -> str:
    """The status code name a call that raised ``err`` ends with (the metrics' ``code`` label)."""
    if isinstance(err, GotdError):
        return err.code
    if isinstance(err, aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "ABORTED"
    if not isinstance(err, Exception):  # CancelledError, GeneratorExit: the client went away
        return "CANCELLED"
    return "INTERNAL"


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Requires ``authorization: Bearer <token>`` on every RPC except the health service."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self, continuation: _Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_bytes, self._expected):
            return handler
        reason = "missing bearer token" if not given_bytes else "invalid bearer token"

        def reject(_behavior: Any) -> Any:
            async def call(_request: Any, _context: Ctx) -> Any:
                raise Unauthenticated(reason)

            return call

        def reject_stream(_behavior: Any) -> Any:
            async def call(_request: Any, _context: Ctx) -> AsyncIterator[Any]:
                raise Unauthenticated(reason)
                yield  # pragma: no cover - makes this an async generator

            return call

        return _rebuild(handler, reject, reject_stream)


class DecodeOffLoop(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Decodes request messages of ``threshold`` bytes or more on a worker thread, not on the event loop.

    Installed innermost: grpc hands over the raw bytes, and this wrapper decodes them (in a thread when
    large) before the servicer runs, so a 64 MiB Ingest batch does not stall health checks or other
    calls. A message that does not decode is INVALID_ARGUMENT.
    """

    def __init__(self, threshold: int = 64 << 10) -> None:
        self._threshold = threshold

    async def intercept_service(
        self, continuation: _Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        threshold = self._threshold

        async def decode(raw: bytes) -> Any:
            try:
                if len(raw) < threshold:
                    return parse(raw)
                return await asyncio.to_thread(parse, raw)
            except DecodeError:
                raise InvalidArgument("the request is not a valid message of this method") from None

        async def decoded(raw_iterator: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for raw in raw_iterator:
                yield await decode(raw)

        streaming = handler.stream_unary is not None or handler.stream_stream is not None

        async def request_of(raw: Any) -> Any:
            return decoded(raw) if streaming else await decode(raw)

        def unary(behavior: Any) -> Any:
            async def call(raw: Any, context: Ctx) -> Any:
                return await behavior(await request_of(raw), context)

            return call

        def stream(behavior: Any) -> Any:
            async def call(raw: Any, context: Ctx) -> AsyncIterator[Any]:
                async for item in behavior(await request_of(raw), context):
                    yield item

            return call

        return _rebuild(handler, unary, stream, raw_requests=True)
