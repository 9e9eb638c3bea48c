"""Typed results of the client: plain frozen dataclasses built from ``gotd.v1`` messages."""

from __future__ import annotations

from dataclasses import dataclass

from gotd.v1 import selection_pb2 as pb

_MODE_NAMES = {
    pb.SELECTION_MODE_AUTO: "auto",
    pb.SELECTION_MODE_EXACT: "exact",
    pb.SELECTION_MODE_GLOBAL: "global",
    pb.SELECTION_MODE_PAPER: "paper",
}
_STAGE_NAMES = {
    pb.STAGE_EMBED: "embed",
    pb.STAGE_LOAD: "load",
    pb.STAGE_SOLVE: "solve",
    pb.STAGE_SCORE: "score",
}


@dataclass(frozen=True, slots=True)
class PoolInfo:
    name: str
    count: int
    version: int
    model: str
    dim: int

    @classmethod
    def from_pb(cls, m: pb.PoolInfo) -> PoolInfo:
        return cls(m.name, m.count, m.version, m.model, m.dim)


@dataclass(frozen=True, slots=True)
class TargetSetInfo:
    name: str
    count: int
    model: str
    dim: int
    content_hash: str

    @classmethod
    def from_pb(cls, m: pb.TargetSetInfo) -> TargetSetInfo:
        return cls(m.name, m.count, m.model, m.dim, m.content_hash)


@dataclass(frozen=True, slots=True)
class IdSetInfo:
    pool: str
    name: str
    count: int

    @classmethod
    def from_pb(cls, m: pb.IdSetInfo) -> IdSetInfo:
        return cls(m.pool, m.name, m.count)


@dataclass(frozen=True, slots=True)
class IngestResult:
    pool: str
    inserted: int
    updated: int
    unchanged: int
    batches: int
    embedded: int
    info: PoolInfo

    @classmethod
    def from_pb(cls, m: pb.IngestResponse) -> IngestResult:
        return cls(
            m.pool, m.inserted, m.updated, m.unchanged, m.batches, m.embedded, PoolInfo.from_pb(m.info)
        )


@dataclass(frozen=True, slots=True)
class SelectProgress:
    stage: str
    done: int
    total: int

    @classmethod
    def from_pb(cls, m: pb.Progress) -> SelectProgress:
        return cls(_STAGE_NAMES.get(m.stage, "unspecified"), m.done, m.total)


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    id: str
    score: float
    rank: int
    domain: str = ""
    meta_json: str = ""

    @classmethod
    def from_pb(cls, m: pb.RankedCandidate) -> RankedCandidate:
        return cls(m.id, m.score, m.rank, m.domain, m.meta_json)


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    id: str
    score: float


@dataclass(frozen=True, slots=True)
class NearCopy:
    """A candidate skipped because it repeats the returned candidate ``copy_of``."""

    id: str
    copy_of: str
    cosine: float


@dataclass(frozen=True, slots=True)
class SettingScore:
    """Validation scores of one cost setting (``relative_eps`` None: an absolute epsilon)."""

    embedding_weight: float
    relative_eps: float | None
    recall: float
    mrr: float
    auc: float

    @property
    def label(self) -> str:
        eps = "abs" if self.relative_eps is None else f"{self.relative_eps:g}"
        return f"w{self.embedding_weight:g}-rel{eps}"


@dataclass(frozen=True, slots=True)
class CostValidation:
    """How the cost setting was chosen: ``status`` is validated, fallback, bypassed or no_sketches."""

    status: str
    detail: str
    embedding_weight: float
    relative_eps: float | None
    settings: tuple[SettingScore, ...]
    fraction: float
    held_out: int
    pool_sample: int
    cache_hit: bool

    @classmethod
    def from_pb(cls, m: pb.CostValidation) -> CostValidation:
        def rel(c: pb.CostSetting) -> float | None:
            return c.relative_epsilon if c.HasField("relative_epsilon") else None

        settings = tuple(
            SettingScore(s.setting.embedding_weight, rel(s.setting), s.recall, s.mean_reciprocal_rank, s.auc)
            for s in m.settings
        )
        status = pb.ValidationStatus.Name(m.status).removeprefix("VALIDATION_STATUS_").lower()
        return cls(
            status, m.detail, m.chosen.embedding_weight, rel(m.chosen), settings, m.fraction, m.held_out,
            m.pool_sample, m.cache_hit,
        )  # fmt: skip

    def describe(self) -> str:
        """One line: the status, the chosen setting and every setting's held-out recall."""
        eps = "the absolute epsilon" if self.relative_eps is None else f"relative eps {self.relative_eps:g}"
        text = f"cost {self.status}: w={self.embedding_weight:g}, {eps}"
        if self.settings:
            scores = ", ".join(f"{s.label} {s.recall:.3f}" for s in self.settings)
            hit = ", from the cache" if self.cache_hit else ""
            text += f" (held-out recall at {self.fraction:g} of the pool{hit}: {scores})"
        return f"{text}; {self.detail}" if self.detail else text


@dataclass(frozen=True, slots=True)
class SelectSummary:
    pool_version: int
    pool_size: int
    eligible: int
    returned: int
    k_exceeds_pool: bool
    mode: str
    eps: float
    ot_distance: float
    iterations: int
    marginal_error: float
    converged: bool
    cache_hit: bool
    warm_started: bool
    target_count: int
    target_hash: str
    embed_ms: float
    load_ms: float
    solve_ms: float
    score_ms: float
    total_ms: float
    cost: str = "embedding"
    embedding_weight: float = 1.0
    near_duplicates_excluded: int = 0
    near_copy_cosine: float = 0.0
    near_copies_skipped: int = 0
    too_few_distinct: bool = False
    near_copies: tuple[NearCopy, ...] = ()
    rank_ms: float = 0.0
    epoch_version: int = 0  # pool version the answering potential was solved at
    rows_scored: int = 0  # rows put through the c-transform by this request
    staleness: float = 0.0  # share of the pool written since the epoch
    solved: bool = False  # whether this request solved (opened the epoch)
    validate_ms: float = 0.0
    validation: CostValidation | None = None
    recorded: int = 0  # record_into: returned ids the set did not hold yet
    record_set_count: int = 0  # record_into: ids in the set after recording
    excluded_by_set: int = 0  # exclude_set: ids of the set found in the pool

    @classmethod
    def from_pb(cls, m: pb.Summary) -> SelectSummary:
        t = m.timings
        return cls(
            m.pool_version, m.pool_size, m.eligible, m.returned, m.k_exceeds_pool,
            _MODE_NAMES.get(m.mode, "auto"), m.epsilon, m.ot_distance, m.iterations, m.marginal_error,
            m.converged, m.cache_hit, m.warm_started, m.target_count, m.target_hash,
            t.embed_ms, t.load_ms, t.solve_ms, t.score_ms, t.total_ms,
            COST_NAMES.get(m.cost, "embedding"), m.embedding_weight, m.near_duplicates_excluded,
            m.near_copy_cosine, m.near_copies_skipped, m.too_few_distinct,
            tuple(NearCopy(c.id, c.copy_of, c.cosine) for c in m.near_copies), t.rank_ms,
            epoch_version=m.epoch.pool_version, rows_scored=m.epoch.rows_scored,
            staleness=m.epoch.staleness, solved=m.epoch.solved, validate_ms=t.validate_ms,
            validation=CostValidation.from_pb(m.validation) if m.HasField("validation") else None,
            recorded=m.recorded, record_set_count=m.record_set_count, excluded_by_set=m.excluded_by_set,
        )  # fmt: skip


SelectEvent = SelectProgress | RankedCandidate | SelectSummary
COSTS = {"auto": pb.COST_UNSPECIFIED, "embedding": pb.COST_EMBEDDING, "fused": pb.COST_FUSED}
"""Cost names of the client API ("auto": the server's default) and their wire values."""
COST_NAMES = {value: name for name, value in COSTS.items() if name != "auto"}
