"""Proto-free request and event types exchanged between the servicer and the selection engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from gotd.cache.records import Record
from gotd.server.selection.costs import Cost
from gotd.server.selection.modes import Mode
from gotd.server.selection.validation import SettingScore


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
class Ranked:
    """One ranked candidate."""

    id: str
    score: float
    rank: int
    domain: str = ""
    meta_json: str = ""


@dataclass(frozen=True, slots=True)
class RankedBatch:
    """Consecutive ranked candidates."""

    candidates: tuple[Ranked, ...]


class ValidationStatus(StrEnum):
    """How the cost setting of a request was chosen (values match ``gotd.v1.ValidationStatus`` names)."""

    VALIDATED = "validated"
    FALLBACK = "fallback"
    BYPASSED = "bypassed"
    NO_SKETCHES = "no_sketches"


@dataclass(frozen=True, slots=True)
class CostValidation:
    """The cost setting used and how it was chosen (:mod:`gotd.server.service.autocost`).

    ``relative_eps`` is None when the absolute epsilon of the summary was used; ``scores`` lists every
    setting tried (``VALIDATED`` only).
    """

    status: ValidationStatus
    detail: str
    embedding_weight: float
    relative_eps: float | None
    scores: tuple[SettingScore, ...] = ()
    fraction: float = 0.0
    held_out: int = 0
    pool_sample: int = 0
    cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class NearCopy:
    """A candidate skipped because it repeats the returned candidate ``copy_of``."""

    id: str
    copy_of: str
    cosine: float


@dataclass(frozen=True, slots=True)
class Epoch:
    """The potential epoch that answered: the pool version its potential was solved at, the rows
    scored by this request, the share of the pool's rows written since the epoch, whether it solved."""

    pool_version: int = 0
    rows_scored: int = 0
    staleness: float = 0.0
    solved: bool = False


@dataclass(frozen=True, slots=True)
class SelectSummary:
    """Closes a selection."""

    pool_version: int
    pool_size: int
    eligible: int
    returned: int
    k_exceeds_pool: bool
    mode: Mode
    eps: float
    ot_distance: float
    iterations: int
    marginal_error: float
    converged: bool
    cache_hit: bool
    warm_started: bool
    target_count: int
    target_hash: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    cost: Cost = Cost.EMBEDDING
    embedding_weight: float = 1.0
    near_duplicates_excluded: int = 0
    near_copy_cosine: float = 0.0
    near_copies_skipped: int = 0
    too_few_distinct: bool = False
    near_copies: tuple[NearCopy, ...] = ()
    epoch: Epoch = Epoch()
    validation: CostValidation | None = None
    excluded_by_set: int = 0
    recorded: int = 0  # filled in by the servicer when it records the returned ids
    record_set_count: int = 0


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Scores in request order."""

    scores: tuple[tuple[str, float], ...]
    pool_version: int
    cache_hit: bool
    epoch: Epoch = Epoch()
    validation: CostValidation | None = None


SelectEvent = Progress | RankedBatch | SelectSummary
