"""The selection engine: joins the store, the embedder, the dual cache and the OT math. Proto-free.

Every path ranks with the one rule of :mod:`gotd.server.selection.modes`: scores are the calibrated
gradient of the c-transform of the float32 target potential ``g``, whether ``g`` was just solved,
read from the dual cache, or recomputed after a cache failure (Kang et al., 2024).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import psutil
import xxhash

from gotd.cache.duals.cache import DualCache, cache_key
from gotd.cache.errors import InvalidArgument, ResourceExhausted, Unavailable
from gotd.cache.store.core import PoolArrays, Store
from gotd.cache.store.idsets import IdSets
from gotd.client.types import CostValidation, SelectSummary
from gotd.server.selection.algorithm import code_version
from gotd.server.selection.costs import (
    Cost,
    CostConfig,
    Features,
    ResolvedCost,
    complete_sketches,
    pool_features,
    resolve_cost,
    sketch_hash,
)
from gotd.server.selection.modes import Mode, resolve_mode
from gotd.server.selection.scoring import Scorer, local_scorer
from gotd.server.service.autocost import CostChooser
from gotd.server.service.config import Settings
from gotd.server.service.epochs import EpochValueCache
from gotd.server.service.idsets import SelectIdSets
from gotd.server.service.job import Emit, Job, StopCheck
from gotd.server.service.metrics import Metrics
from gotd.server.service.options import cost_config, max_staleness, solver_config
from gotd.server.service.pools import (
    PoolSnapshots,
    SnapshotMovedError,
    in_snapshot,
    job_positions,
    live_rows,
    select_bytes,
)
from gotd.server.service.ranking import Ranker, emit_ranking
from gotd.server.service.requests import (
    Epoch,
    Progress,
    ScoreParams,
    ScoreResult,
    SelectParams,
    SolverParams,
    Stage,
)
from gotd.server.service.sketched import PoolSketches
from gotd.server.service.targets import Target, TargetResolver

LOG = logging.getLogger(__name__)
#: Snapshots a request reads before giving up (UNAVAILABLE, retried by clients) when the pool keeps
#: changing under it: a later snapshot includes whatever made the earlier one stale.
SNAPSHOT_ATTEMPTS = 3


class SelectionEngine:
    """Ranks pools against targets; thread-safe, called from the servicer's worker threads."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        targets: TargetResolver,
        duals: DualCache,
        metrics: Metrics,
        scorer: Scorer = local_scorer,
        id_sets: IdSets | None = None,
    ) -> None:
        self.scorer = scorer
        self.id_sets = SelectIdSets(id_sets or IdSets(store.env))
        self._settings = settings
        self._store = store
        self._targets = targets
        self._duals = duals
        self._metrics = metrics
        self._pools = PoolSnapshots(store, settings.pool_cache_bytes)
        self._epoch_values = EpochValueCache(
            duals, max_bytes=settings.score_cache_bytes, redis_max_bytes=settings.epoch_values_redis_bytes
        )
        # per pool version: whether every row has a sketch, the fused rows' factors (4 bytes a row)
        self._sketches = PoolSketches(max(1 << 20, settings.pool_cache_bytes // 16), store)
        self._ranker = Ranker(
            settings.near_copy_cosine, on_walk=lambda kind: metrics.near_copy_walks.labels(kind).inc()
        )
        self._costs = CostChooser(
            settings, duals, on_outcome=lambda outcome: metrics.cost_validations.labels(outcome).inc()
        )

    # -- selection -----------------------------------------------------------------------------
    def select(self, params: SelectParams, emit: Emit, stop: StopCheck) -> None:
        """Run one selection, emitting Progress, RankedBatch and finally one SelectSummary."""
        if params.k < 1:
            raise InvalidArgument(f"k must be >= 1, got {params.k}")
        if params.k > self._settings.max_k:
            raise InvalidArgument(f"k must be <= {self._settings.max_k}, got {params.k}")
        if not 0 <= params.batch_size <= 100_000:
            raise InvalidArgument(f"batch_size must be in [0, 100000], got {params.batch_size}")
        pool_size = self._admit(params)
        self.id_sets.check_record(params, pool_size)
        id_set = self.id_sets.excluded(params)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        job, validation = self._prepare(
            params.pool, params.target, params.solver, params.domains, emit, stop, timings, k=params.k
        )
        with self._timed("score", timings):
            scores = job.scores(emit, stop)
        with self._timed("rank", timings):
            ranking = self._ranker.rank(params, job, scores, id_set)
        order = ranking.order
        emit_ranking(self._store.metadata, params, job, order, emit)
        timings["total"] = (time.perf_counter() - started) * 1e3
        p, t = job.potential, timings
        summary = SelectSummary(
            pool_version=job.arrays.version, pool_size=job.arrays.live, eligible=ranking.eligible,
            returned=len(order), k_exceeds_pool=params.k > ranking.eligible, mode=p.mode.value, eps=p.eps,
            ot_distance=p.cost, iterations=0 if job.cache_hit else p.n_iter,
            marginal_error=p.marginal_error, converged=p.converged, cache_hit=job.cache_hit,
            warm_started=job.warm_started, target_count=job.target.count,
            target_hash=job.target.content_hash, embed_ms=t.get("embed", 0.0), load_ms=t.get("load", 0.0),
            solve_ms=t.get("solve", 0.0), score_ms=t.get("score", 0.0), total_ms=t["total"],
            rank_ms=t.get("rank", 0.0), validate_ms=t.get("validate", 0.0), cost=job.cost.cost.value,
            embedding_weight=job.cost.embedding_weight, near_duplicates_excluded=ranking.near_duplicates,
            near_copy_cosine=ranking.near_copy_cosine, near_copies_skipped=ranking.near_copies_skipped,
            too_few_distinct=ranking.too_few_distinct, near_copies=ranking.near_copies,
            epoch_version=job.epoch_version, rows_scored=job.rows_scored, staleness=job.staleness,
            solved=job.solved, validation=validation, excluded_by_set=ranking.excluded_by_set,
        )  # fmt: skip
        emit(summary)

    def score(self, params: ScoreParams, stop: StopCheck) -> ScoreResult:
        """Scores of given candidates (request order), with the same rule, epoch and values as Select."""
        if not params.ids:
            raise InvalidArgument("ids must not be empty")
        noop: Emit = lambda _event: None  # noqa: E731
        for attempt in range(SNAPSHOT_ATTEMPTS):
            job, validation = self._prepare(params.pool, params.target, params.solver, (), noop, stop, {})
            pool_rows = self._store.rows_for_ids(params.pool, list(params.ids))
            if in_snapshot(job.arrays, params.ids, pool_rows):
                break
            self._metrics.snapshot_retries.labels("score").inc()
            LOG.info("score: pool %s changed during the request (attempt %d)", params.pool, attempt + 1)
        else:
            raise Unavailable(f"pool {params.pool!r} kept changing during the request; retry")
        positions = job_positions(job.arrays, job.rows, pool_rows, params.ids, job.potential.mode.value)
        values = job.scores(noop, stop).at(positions)
        return ScoreResult(
            scores=tuple((cid, float(v)) for cid, v in zip(params.ids, values, strict=True)),
            pool_version=job.arrays.version,
            cache_hit=job.cache_hit,
            epoch=_epoch(job),
            validation=validation,
        )

    # -- internals -----------------------------------------------------------------------------
    def _admit(self, params: SelectParams) -> int:
        """The pool's live candidates (deleted rows left out); RESOURCE_EXHAUSTED when the Select's
        estimated peak memory (over all its rows) exceeds what is available."""
        info = self._store.get_pool(params.pool)
        sketches = not cost_config(self._settings, params.solver).embedding_only
        if sketches:  # none read when the store says no live row has one
            stats = self._store.sketch_stats(info.name, info.uid, info.version)
            sketches = stats is None or stats.zero_rows < info.count  # zero rows count deleted ones
        need = select_bytes(
            info, params.k, sketches=sketches, loaded=self._pools.cached(info, sketches=sketches)
        )
        limit = self._settings.memory_limit_bytes
        free = psutil.virtual_memory().available if limit is None else limit
        if need > free:
            raise ResourceExhausted(
                f"a Select of k={params.k} on pool {params.pool!r} ({info.count} candidates) needs about "
                f"{need / 2**30:.2f} GiB and {free / 2**30:.2f} GiB are available; ask for a smaller k, "
                "use the embedding cost (no sketch rows) or a float16 pool, or give the server more memory"
            )
        return info.live

    def _prepare(
        self,
        pool: str,
        target_input: object,
        solver: SolverParams,
        domains: tuple[str, ...],
        emit: Emit,
        stop: StopCheck,
        timings: dict[str, float],
        *,
        k: int | None = None,
    ) -> tuple[Job, CostValidation]:
        max_staleness(self._settings, solver)  # a bad value fails before any work
        for attempt in range(SNAPSHOT_ATTEMPTS):
            info = self._store.get_pool(pool)
            with self._timed("embed", timings):
                target = self._targets.resolve(target_input, info, emit)  # type: ignore[arg-type]
            stop()
            with self._timed("load", timings):
                emit(Progress(Stage.LOAD, 0, info.count))
                arrays = self._snapshot(pool, solver, lean=attempt == 0)
                self._metrics.pool_snapshot_bytes.set(self._pools.size_bytes)
                emit(Progress(Stage.LOAD, len(arrays.ids), len(arrays.ids)))
            if (arrays.uid, arrays.model, arrays.dim) != (info.uid, info.model, info.dim):
                self._metrics.snapshot_retries.labels("prepare").inc()
                LOG.info("pool %s was replaced during the request (attempt %d)", pool, attempt + 1)
                continue  # the target is resolved against the snapshot's pool incarnation
            rows = live_rows(arrays, domains)
            try:
                arrays, chosen, validation, cost = self._choose(arrays, rows, target, solver, k, timings)
            except SnapshotMovedError:
                self._metrics.snapshot_retries.labels("prepare").inc()
                LOG.info("pool %s changed during the cost validation (attempt %d)", pool, attempt + 1)
                continue
            break
        else:
            raise Unavailable(f"pool {pool!r} kept being replaced during the request; retry")
        solver = chosen
        config = solver_config(self._settings, solver)
        config = replace(config, mode=resolve_mode(config.mode, len(rows), config))
        family = cache_key(
            pool=pool,
            pool_uid=arrays.uid,
            target=target.content_hash,
            sketch=sketch_hash(target.sketches) if cost.cost is Cost.FUSED else "",
            cost=cost.tag,
            mode=config.mode.value,
            eps=config.eps if config.relative_eps is None else 0.0,
            rel_eps=config.relative_eps or 0.0,
            tol=config.tol,
            max_iter=config.max_iter,
            summary=config.summary_size if config.mode is Mode.GLOBAL else 0,
            cells=config.summary_cells if config.mode is Mode.GLOBAL else 0,
            paper=config.paper_domains if config.mode is Mode.PAPER else 0,
            domains=xxhash.xxh3_64_hexdigest("\x1f".join(sorted(domains)).encode()),
            model=arrays.model,
            code=code_version(config),
        )
        features = lambda: self._features(arrays, cost)  # noqa: E731  (built only when the job needs them)
        job = Job(self, arrays, cost, features, rows, target, config, family, timings)
        with self._timed("solve", timings):
            job.potential_for(emit, stop, max_staleness=max_staleness(self._settings, solver, cost.cost))
        return job, validation

    def _choose(
        self,
        arrays: PoolArrays,
        rows: np.ndarray,
        target: Target,
        solver: SolverParams,
        k: int | None,
        timings: dict[str, float],
    ) -> tuple[PoolArrays, SolverParams, CostValidation, ResolvedCost]:
        """Snapshot (with the sketch rows its cost needs), options, validation report and cost."""
        with self._timed("validate", timings):
            chosen, validation = self._costs.choose(
                arrays,
                rows,
                target,
                solver,
                k=k,
                sketched=lambda: self._sketches.sketched(arrays),
                idf=lambda: self._sketches.idf(arrays),
                sketch_rows=lambda picked: self._sketches.rows(arrays, picked),
                max_staleness=max_staleness(self._settings, solver, Cost.FUSED),
            )
        cost = self._resolve(arrays, target, cost_config(self._settings, chosen))
        if cost.cost is not Cost.EMBEDDING and arrays.sketches is None:
            with self._timed("load", timings):  # a fused setting chosen: its rows, same version
                arrays = self._pools.with_sketches(arrays)
        return arrays, chosen, validation, cost

    def _snapshot(self, pool: str, solver: SolverParams, *, lean: bool) -> PoolArrays:
        """The pool's snapshot: without sketch rows for the embedding cost, and when ``lean`` for a
        validated cost whose version's sketch facts the store keeps (the validation reads its sample's
        rows alone; :meth:`_choose` adds the rest if it chooses a fused setting)."""
        need = not cost_config(self._settings, solver).embedding_only
        if need and lean and self._costs.validates(solver):
            arrays = self._pools.get(pool, sketches=False)
            if arrays.sketches is not None or self._sketches.from_store(arrays):
                return arrays
        return self._pools.get(pool, sketches=need)

    def _resolve(self, arrays: PoolArrays, target: Target, cost: CostConfig) -> ResolvedCost:
        """The request's cost: embedding, or fused when the pool and the target have sketches."""
        embedding = ResolvedCost(Cost.EMBEDDING, 1.0)
        if cost.embedding_only:  # decided without reading any sketch
            return embedding
        target_sketched = complete_sketches(target.sketches)
        if cost.cost is Cost.AUTO and not target_sketched:  # embedding whatever the pool holds
            return embedding
        pool_sketched = self._sketches.sketched(arrays)
        kind = resolve_cost(
            cost, pool=arrays.name, pool_sketched=pool_sketched, target_sketched=target_sketched
        )
        return embedding if kind is Cost.EMBEDDING else ResolvedCost(kind, cost.embedding_weight, cost.metric)

    def _features(self, arrays: PoolArrays, cost: ResolvedCost) -> Features:
        """The pool version's rows in the feature space of ``cost`` (fused: factors cached per version)."""
        if cost.cost is Cost.EMBEDDING:
            return pool_features(arrays.vectors, None, Cost.EMBEDDING, 1.0)
        factors = self._sketches.factors(arrays)
        w = cost.embedding_weight
        return pool_features(arrays.vectors, arrays.sketches, cost.cost, w, factors, cost.metric)

    @contextmanager
    def _timed(self, stage: str, timings: dict[str, float]) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            timings[stage] = timings.get(stage, 0.0) + elapsed * 1e3
            self._metrics.stage_seconds.labels(stage).observe(elapsed)

    def forget_pool(self, pool: str) -> None:
        """Drop in-memory state of a pool (after deletion)."""
        self._pools.forget(pool)
        self._epoch_values.forget()
        self._sketches.forget(pool)
        self._ranker.forget()

    @property
    def duals(self) -> DualCache:
        return self._duals

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def sketches(self) -> PoolSketches:
        return self._sketches

    @property
    def epoch_values(self) -> EpochValueCache:
        return self._epoch_values


def _epoch(job: Job) -> Epoch:
    return Epoch(
        pool_version=job.epoch_version,
        rows_scored=job.rows_scored,
        staleness=job.staleness,
        solved=job.solved,
    )
