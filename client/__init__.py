"""gotd.client: typed Python client for the gotd gRPC service and the ``gotd`` command line."""

from gotd.client.client import Client, TlsConfig
from gotd.client.types import (
    CostValidation,
    IngestResult,
    NearCopy,
    PoolInfo,
    RankedCandidate,
    ScoredCandidate,
    SelectProgress,
    SelectSummary,
    SettingScore,
    SolverOptions,
    TargetSetInfo,
)

__all__ = [
    "Client",
    "CostValidation",
    "IngestResult",
    "NearCopy",
    "PoolInfo",
    "RankedCandidate",
    "ScoredCandidate",
    "SelectProgress",
    "SelectSummary",
    "SettingScore",
    "SolverOptions",
    "TargetSetInfo",
    "TlsConfig",
]
