"""The typed values of the API: plain frozen dataclasses, each mapped to its ``gotd.v1`` message here.

This is the one definition of the results (summary, ranked candidates, near-copies, cost validation)
and of the solver options: the client reads them with ``from_pb``, the server builds the same types and
sends them with ``to_pb``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gotd.v1 import selection_pb2 as pb

MODES = {
    "auto": pb.SELECTION_MODE_AUTO,
    "exact": pb.SELECTION_MODE_EXACT,
    "global": pb.SELECTION_MODE_GLOBAL,
    "paper": pb.SELECTION_MODE_PAPER,
}
"""Selection mode names of the API and their wire values."""
_MODE_NAMES = {value: name for name, value in MODES.items()}
COSTS = {"auto": pb.COST_UNSPECIFIED, "embedding": pb.COST_EMBEDDING, "fused": pb.COST_FUSED}
"""Cost names of the API ("auto": the server's default) and their wire values."""
COST_NAMES = {value: name for name, value in COSTS.items() if name != "auto"}
_STAGE_NAMES = {
    pb.STAGE_EMBED: "embed",
    pb.STAGE_LOAD: "load",
    pb.STAGE_SOLVE: "solve",
    pb.STAGE_SCORE: "score",
}


@dataclass(frozen=True, slots=True)
class SolverOptions:
    """The solver keywords of Select and Score; None leaves a setting to the server's default.

    ``mode`` is "auto", "exact", "global" or "paper"; ``cost`` is "auto" (the server's default),
    "embedding" or "fused" (weight ``embedding_weight`` on the embedding cost); ``relative_eps`` sets
    epsilon as a multiple of the median pool-target cost; ``max_staleness`` bounds the share of the
    pool written since the potential epoch that may answer (0: solve every new pool version).
    """

    mode: str = "auto"
    eps: float | None = None
    tol: float | None = None
    max_iter: int | None = None
    summary_size: int | None = None
    cost: str = "auto"
    embedding_weight: float | None = None
    relative_eps: float | None = None
    max_staleness: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {sorted(COSTS)}, got {self.cost!r}")

    @property
    def mode_pb(self) -> pb.SelectionMode.ValueType:
        """The wire value of ``mode`` (a field of the request, beside the solver options)."""
        return MODES[self.mode]

    def to_pb(self) -> pb.SolverOptions:
        """The wire solver options (unset fields stay unset)."""
        return pb.SolverOptions(
            cost=COSTS[self.cost], epsilon=self.eps, tolerance=self.tol, max_iterations=self.max_iter,
            summary_size=self.summary_size, embedding_weight=self.embedding_weight,
            relative_epsilon=self.relative_eps, max_staleness=self.max_staleness,
        )  # fmt: skip


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
class IdSetPage:
    """One page of an id set's sorted ids; ``next_page_token`` is "" after the last page."""

    info: IdSetInfo
    ids: tuple[str, ...]
    next_page_token: str

    @classmethod
    def from_pb(cls, m: pb.GetIdSetResponse) -> IdSetPage:
        return cls(IdSetInfo.from_pb(m.info), tuple(m.ids), m.next_page_token)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    pool: str
    deleted: int  # candidates deleted by the call
    not_found: int  # ids not in the pool (unknown, or deleted before)
    info: PoolInfo

    @classmethod
    def from_pb(cls, m: pb.DeleteRecordsResponse) -> DeleteResult:
        return cls(m.pool, m.deleted, m.not_found, PoolInfo.from_pb(m.info))


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

    def to_pb(self) -> pb.RankedCandidate:
        return pb.RankedCandidate(
            id=self.id, score=self.score, rank=self.rank, domain=self.domain, meta_json=self.meta_json
        )


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

    def to_pb(self) -> pb.NearCopy:
        return pb.NearCopy(id=self.id, copy_of=self.copy_of, cosine=self.cosine)


@dataclass(frozen=True, slots=True)
class SettingScore:
    """Validation scores of one cost setting (``relative_eps`` None: an absolute epsilon)."""

    embedding_weight: float
    relative_eps: float | None
    recall: float
    mrr: float
    auc: float
    metric_strength: float = 0.0

    @property
    def label(self) -> str:
        eps = "abs" if self.relative_eps is None else f"{self.relative_eps:g}"
        base = f"w{self.embedding_weight:g}-rel{eps}"
        return f"{base}-metric{self.metric_strength:g}" if self.metric_strength else base

    def to_pb(self) -> pb.SettingScore:
        setting = pb.CostSetting(
            embedding_weight=self.embedding_weight,
            relative_epsilon=self.relative_eps,
            metric_strength=self.metric_strength,
        )
        return pb.SettingScore(
            setting=setting, recall=self.recall, mean_reciprocal_rank=self.mrr, auc=self.auc
        )


@dataclass(frozen=True, slots=True)
class CostValidation:
    """How the cost setting was chosen: ``status`` is validated, fallback, bypassed or no_sketches."""

    status: str
    detail: str
    embedding_weight: float
    relative_eps: float | None
    settings: tuple[SettingScore, ...] = ()
    fraction: float = 0.0
    held_out: int = 0
    pool_sample: int = 0
    cache_hit: bool = False
    metric_strength: float = 0.0

    @classmethod
    def from_pb(cls, m: pb.CostValidation) -> CostValidation:
        def rel(c: pb.CostSetting) -> float | None:
            return c.relative_epsilon if c.HasField("relative_epsilon") else None

        settings = tuple(
            SettingScore(
                s.setting.embedding_weight,
                rel(s.setting),
                s.recall,
                s.mean_reciprocal_rank,
                s.auc,
                s.setting.metric_strength,
            )
            for s in m.settings
        )
        status = pb.ValidationStatus.Name(m.status).removeprefix("VALIDATION_STATUS_").lower()
        return cls(
            status, m.detail, m.chosen.embedding_weight, rel(m.chosen), settings, m.fraction, m.held_out,
            m.pool_sample, m.cache_hit, m.chosen.metric_strength,
        )  # fmt: skip

    def to_pb(self) -> pb.CostValidation:
        return pb.CostValidation(
            status=pb.ValidationStatus.Value(f"VALIDATION_STATUS_{self.status.upper()}"),
            detail=self.detail,
            chosen=pb.CostSetting(
                embedding_weight=self.embedding_weight,
                relative_epsilon=self.relative_eps,
                metric_strength=self.metric_strength,
            ),
            settings=[s.to_pb() for s in self.settings],
            fraction=self.fraction,
            held_out=self.held_out,
            pool_sample=self.pool_sample,
            cache_hit=self.cache_hit,
        )

    def describe(self) -> str:
        """One line: the status, the chosen setting and every setting's held-out recall."""
        eps = "the absolute epsilon" if self.relative_eps is None else f"relative eps {self.relative_eps:g}"
        text = f"cost {self.status}: w={self.embedding_weight:g}, {eps}"
        if self.metric_strength:
            text += f", learned metric of strength {self.metric_strength:g}"
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

    def to_pb(self) -> pb.Summary:
        return pb.Summary(
            pool_version=self.pool_version, pool_size=self.pool_size, eligible=self.eligible,
            returned=self.returned, k_exceeds_pool=self.k_exceeds_pool, mode=MODES[self.mode],
            epsilon=self.eps, ot_distance=self.ot_distance, iterations=self.iterations,
            marginal_error=self.marginal_error, converged=self.converged, cache_hit=self.cache_hit,
            warm_started=self.warm_started, target_count=self.target_count, target_hash=self.target_hash,
            timings=pb.Timings(
                embed_ms=self.embed_ms, load_ms=self.load_ms, solve_ms=self.solve_ms,
                score_ms=self.score_ms, total_ms=self.total_ms, rank_ms=self.rank_ms,
                validate_ms=self.validate_ms,
            ),
            cost=COSTS[self.cost], embedding_weight=self.embedding_weight,
            near_duplicates_excluded=self.near_duplicates_excluded,
            near_copies_skipped=self.near_copies_skipped, too_few_distinct=self.too_few_distinct,
            near_copy_cosine=self.near_copy_cosine, near_copies=[c.to_pb() for c in self.near_copies],
            epoch=pb.Epoch(
                pool_version=self.epoch_version, rows_scored=self.rows_scored, staleness=self.staleness,
                solved=self.solved,
            ),
            validation=None if self.validation is None else self.validation.to_pb(),
            recorded=self.recorded, record_set_count=self.record_set_count,
            excluded_by_set=self.excluded_by_set,
        )  # fmt: skip


SelectEvent = SelectProgress | RankedCandidate | SelectSummary
