"""Ray plumbing shared by the scorer, the ingest and the benchmark: import check, start-up, accounting.

Ray is imported only inside functions: without the extra ``gotd[ray]`` every caller fails early with
an ImportError that says what to install.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
import xxhash

__all__ = [
    "INSTALL_HINT",
    "RequestBytes",
    "content_key",
    "init_ray",
    "int_bytes",
    "lost_shard",
    "require_ray",
]

LOG = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'gotd[ray]'"


def require_ray() -> ModuleType:
    """Import Ray or raise an ImportError that says what to install."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"this needs Ray, which is not installed: {INSTALL_HINT}") from err
    return ray


def init_ray(
    address: str | None, *, num_cpus: int | None = None, object_store_memory: int | None = None
) -> bool:
    """Connect to (``address``) or start a local Ray unless one is up; True when this call started it."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None or address == "local":
        kwargs.update(num_cpus=num_cpus, object_store_memory=object_store_memory)
    ray.init(address=address, **kwargs)
    LOG.info(
        "ray %s: %s", "connected to " + address if address else "started locally", ray.cluster_resources()
    )
    return True


@dataclass(slots=True)
class RequestBytes:
    """Payload bytes of the last request (Ray's own framing not included)."""

    sent: int = 0  # g, plus target sets and shards the workers did not hold yet
    received: int = 0  # f (Scorer) or exact sums and top-k pairs (rank)
    shards_shipped: int = 0


def content_key(x: torch.Tensor, ids: Sequence[str] | None) -> str:
    """A snapshot name from the rows' bytes and ids (for callers that have no pool version)."""
    h = xxhash.xxh3_128()
    h.update(np.ascontiguousarray(x.detach().cpu().numpy()).tobytes())
    if ids is not None:
        h.update("\x1f".join(map(str, ids)).encode("utf-8", "surrogatepass"))
    return f"content:{h.hexdigest()}"


def lost_shard(err: BaseException) -> bool:
    """A worker died, restarted (its shards are gone) or does not hold a shard."""
    names = {t.__name__ for t in type(err).__mro__}
    lost = {"RayActorError", "ActorDiedError", "ActorUnavailableError"}
    return bool(names & lost) or "is not held by this worker" in str(err)


def int_bytes(value: int) -> int:
    """Bytes of an integer's magnitude (the exact sums' payload)."""
    return (abs(value).bit_length() + 7) // 8
