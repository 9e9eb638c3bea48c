"""The Redis side of the dual cache: a client for a URL, and what its errors mean.

``redis`` is imported here only when a URL is given, so the embedded default (no Redis) never loads it
(~7 MiB of an idle server and 0.2 s of its start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis  # only here: see the module docstring

__all__ = ["connect", "wrong_type"]


def connect(url: str, timeout_seconds: float) -> tuple[redis.Redis, tuple[type[BaseException], ...]]:
    """A client of ``url`` (short socket timeouts, no client-side retries) and the errors a failed call
    raises; ValueError for an invalid URL."""
    import redis  # only here: see the module docstring
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            driver_info=None,
        )
    except ValueError as err:
        raise ValueError(f"invalid Redis URL: {err}") from None
    return client, (redis.RedisError, OSError)


def wrong_type(err: BaseException) -> bool:
    """A WRONGTYPE reply: the key holds a non-string value, i.e. garbage, while Redis is fine."""
    import redis  # only here: see the module docstring

    return isinstance(err, redis.ResponseError) and str(err).startswith("WRONGTYPE")
