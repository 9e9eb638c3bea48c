"""Proto-free request and event types exchanged between the servicer and the selection engine.

The results the client sees as well (the summary, ranked candidates, near-copies, the cost
validation) are the client's types (:mod:`gotd.client.types`): one definition, sent with ``to_pb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from gotd.cache.records import Record
from gotd.client.types import CostValidation, RankedCandidate, SelectSummary
from gotd.server.selection.costs import Cost
from gotd.server.selection.metric import LearnedMetric
from gotd.server.selection.modes import Mode


@dataclass(frozen=True, slots=True)
class TargetInput:
    """A target: a stored set by ``name``, or inline ``records`` (texts and/or embeddings)."""

    name: str | None = None
    records: tuple[Record, ...] = ()


@dataclass(frozen=True, slots=True)
class SolverParams:
    """Per-request solver options; ``None`` takes the server default."""

    mode: Mode | None = None
    eps: float | None = None
    tol: float | None = None
    max_iter: int | None = None
    summary_size: int | None = None
    paper_domains: int | None = None
    cost: Cost | None = None
    embedding_weight: float | None = None
    relative_eps: float | None = None
    max_staleness: float | None = None
    metric: LearnedMetric | None = None  # set by the validation only (a learned setting), never by a request


@dataclass(frozen=True, slots=True)
class SelectParams:
    """One Select call."""

    pool: str
    target: TargetInput
    k: int
    solver: SolverParams = SolverParams()
    exclude_ids: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    batch_size: int = 1000
    include_metadata: bool = False
    near_duplicate_cosine: float | None = None
    near_copy_cosine: float | None = None
    report_near_copies: bool = False
    exclude_set: str = ""
    record_into: str = ""


@dataclass(frozen=True, slots=True)
class ScoreParams:
    """One Score call."""

    pool: str
    target: TargetInput
    ids: tuple[str, ...]
    solver: SolverParams = SolverParams()


class Stage(IntEnum):
    """Stages reported in progress events (values match ``gotd.v1.Stage``)."""

    EMBED = 1
    LOAD = 2
    SOLVE = 3
    SCORE = 4


@dataclass(frozen=True, slots=True)
class Progress:
    """Work done in one stage."""

    stage: Stage
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class RankedBatch:
    """Consecutive ranked candidates, by column (no object per candidate on the way to the wire):
    their ids and scores, the rank of the first, and their domains and metadata JSON (empty: none)."""

    ids: tuple[str, ...]
    scores: tuple[float, ...]
    first_rank: int
    domains: tuple[str, ...] = ()
    meta_json: tuple[str, ...] = ()

    @property
    def candidates(self) -> tuple[RankedCandidate, ...]:
        """The batch as the client sees it."""
        domains, meta = self.domains or ("",) * len(self.ids), self.meta_json or ("",) * len(self.ids)
        ranks = range(self.first_rank, self.first_rank + len(self.ids))
        return tuple(map(RankedCandidate, self.ids, self.scores, ranks, domains, meta))


class ValidationStatus(StrEnum):
    """How the cost setting of a request was chosen (values match ``gotd.v1.ValidationStatus`` names)."""

    VALIDATED = "validated"
    FALLBACK = "fallback"
    BYPASSED = "bypassed"
    NO_SKETCHES = "no_sketches"


@dataclass(frozen=True, slots=True)
class Epoch:
    """The potential epoch that answered: the pool version its potential was solved at, the rows
    scored by this request, the share of the pool's rows written since the epoch, whether it solved."""

    pool_version: int = 0
    rows_scored: int = 0
    staleness: float = 0.0
    solved: bool = False


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Scores in request order."""

    scores: tuple[tuple[str, float], ...]
    pool_version: int
    cache_hit: bool
    epoch: Epoch = Epoch()
    validation: CostValidation | None = None


SelectEvent = Progress | RankedBatch | SelectSummary
