"""gotd.client: typed Python client for the gotd gRPC service and the ``gotd`` command line."""

from gotd.client.client import Client, TlsConfig
from gotd.client.types import (
    IngestResult,
    NearCopy,
    PoolInfo,
    RankedCandidate,
    ScoredCandidate,
    SelectProgress,
    SelectSummary,
    TargetSetInfo,
)

__all__ = [
    "Client",
    "IngestResult",
    "NearCopy",
    "PoolInfo",
    "RankedCandidate",
    "ScoredCandidate",
    "SelectProgress",
    "SelectSummary",
    "TargetSetInfo",
    "TlsConfig",
]
