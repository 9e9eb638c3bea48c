"""Domain errors of gotd, one hierarchy, each kind carrying the gRPC status code it maps to.

The server's error interceptor is the only place that turns these into gRPC statuses
(``grpc.StatusCode[err.code]``); the message of a :class:`GotdError` is safe to show to clients.
This module lives in ``gotd.cache`` because it is the lowest layer: the store, the engine wrappers and
the service all raise these, and ``gotd.cache`` must not import ``gotd.server``.
"""

from __future__ import annotations

from typing import ClassVar


class GotdError(Exception):
    """Base class: a failure the caller can understand and act on."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GotdError):
    """The request itself is malformed (bad id, k <= 0, eps <= 0, NaN vector, ...)."""

    code = "INVALID_ARGUMENT"


class NotFound(GotdError):
    """An unknown pool or target set."""

    code = "NOT_FOUND"


class FailedPrecondition(GotdError):
    """The request is well formed but does not fit the state (dimension or model mismatch)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(GotdError):
    """A configured limit was exceeded."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(GotdError):
    """Missing or wrong credentials."""

    code = "UNAUTHENTICATED"


class Unavailable(GotdError):
    """The server cannot take the request now (shutting down, dependency lost)."""

    code = "UNAVAILABLE"


class Cancelled(GotdError):
    """The client cancelled the call; work stopped at the next block."""

    code = "CANCELLED"


class DeadlineExceeded(GotdError):
    """The call's deadline passed; work stopped at the next block."""

    code = "DEADLINE_EXCEEDED"
