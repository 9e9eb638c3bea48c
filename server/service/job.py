"""One selection job: pool rows × target × configuration — finds or solves the potential, then scores.

The scores are always the calibrated gradient of the c-transform of the float32 potential (the one
ranking rule), whichever way the potential was obtained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
import xxhash

from gotd.cache.duals.cache import DualCache
from gotd.cache.duals.codec import PotentialEntry
from gotd.cache.store.columns import Picked, TextColumn
from gotd.cache.store.core import PoolArrays
from gotd.server.ot.exact import ExactSum
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.rows import Rows, take
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.costs import (
    Cost,
    Features,
    ResolvedCost,
    fused_rows,
    fused_targets,
    target_features,
)
from gotd.server.selection.modes import Mode, Potential, SelectionConfig, domain_labels, solve
from gotd.server.selection.scoring import (
    ScorePass,
    Scorer,
    ShardedScorer,
    row_span,
    run_block_rows,
    score_rows,
)
from gotd.server.service.allocator import trim_heap
from gotd.server.service.epochs import EpochValueCache, EpochValues, stale_rows
from gotd.server.service.metrics import Metrics
from gotd.server.service.potential_codec import potential_entry, potential_from_entry
from gotd.server.service.requests import Progress, SelectEvent, Stage
from gotd.server.service.scores import DenseScores, RowScores, ShardedScores
from gotd.server.service.targets import Target

LOG = logging.getLogger(__name__)
Emit = Callable[[SelectEvent], None]
StopCheck = Callable[[], None]


class JobHost(Protocol):
    """What a job needs from the engine that runs it: the dual cache, metrics, the scorer, epoch values."""

    @property
    def duals(self) -> DualCache:
        """The dual cache of the potentials."""

    @property
    def metrics(self) -> Metrics:
        """The service metrics."""

    @property
    def scorer(self) -> Scorer:
        """The c-transform pass (in process or on Ray)."""

    @property
    def epoch_values(self) -> EpochValueCache:
        """Row values of potential epochs."""


class Job:
    """One pool × target × configuration: finds the potential epoch (or solves one), then scores.

    After :meth:`potential_for`: ``key`` names the epoch (``family:v<epoch version>``), ``epoch_version``
    is the pool version its potential was solved at, ``staleness`` the share of the pool's rows written
    since, ``solved`` whether this request ran the solve. After :meth:`scores`: ``rows_scored``.

    A fused-cost epoch freezes the cost it was solved under: its potential carries the IDF of the pool
    version that opened it, and later rows and the targets are built with it (``idf``). The pool
    version's own features (fused: IDF and inverse norms, work over the whole pool) are built only for
    a solve (``features``, cached by the engine), never for an epoch's rows.
    """

    def __init__(
        self,
        engine: JobHost,
        arrays: PoolArrays,
        cost: ResolvedCost,
        features: Callable[[], Features],
        rows: np.ndarray,
        target: Target,
        config: SelectionConfig,
        family: str,
        timings: dict[str, float],
    ) -> None:
        self.engine = engine
        self.arrays = arrays
        self.cost = cost
        self._features = features
        self._y: torch.Tensor | None = None
        self.rows = rows
        self.target = target
        self.config = config
        self.family = family
        self.key = f"{family}:v{arrays.version}"
        self.cache_hit = False
        self.warm_started = False
        self.solved = False
        self.epoch_version = arrays.version
        self.staleness = 0.0
        self.rows_scored = 0
        self.timings = timings
        self.potential: Potential
        self.ids: TextColumn | Picked = arrays.ids if self.every_row else Picked(arrays.ids, rows)
        self.idf: np.ndarray | None = None  # fused: the IDF weights of the potential in use
        self._frozen: np.ndarray | None = None  # fused: the IDF of the cached potential in use

    @property
    def features(self) -> Features:
        """The pool version's rows in the request's feature space (the engine caches them)."""
        return self._features()

    @property
    def y(self) -> torch.Tensor:
        """The targets in the feature space of the potential in use."""
        if self._y is None:
            t, idf = self.target, self._frozen
            self._y = (
                target_features(self.features, t.vectors, t.sketches)
                if idf is None
                else fused_targets(t.vectors, t.sketches, idf, self.cost.embedding_weight, self.cost.metric)
            )
        return self._y

    @property
    def every_row(self) -> bool:
        """Whether the job's rows are the whole pool, in order (sorted and unique, so ``arange(n)``)."""
        return len(self.rows) == len(self.arrays.ids)

    def _x(self, rows: np.ndarray | None = None) -> Rows:
        """Feature rows (embeddings or fused rows) of ``rows`` (default: the job's rows, no copy for all);
        under a cached potential's IDF, fused rows built with it for ``rows`` only."""
        if rows is None and not self.every_row:
            rows = self.rows
        a, idf = self.arrays, self._frozen
        pick = slice(None) if rows is None else row_span(rows) or rows  # a run of rows: views
        if idf is not None and a.sketches is not None:
            w, metric = self.cost.embedding_weight, self.cost.metric
            return fused_rows(a.vectors[pick], a.sketches.pick(pick), w, idf, metric)
        x = self.features.x
        return x if rows is None else take(x, torch.from_numpy(rows))

    def embeddings(self) -> np.ndarray:
        """Unit embeddings of the job's rows (the pool's own array, not a copy, for all rows)."""
        return self.arrays.vectors if self.every_row else self.arrays.vectors[self.rows]

    def potential_for(self, emit: Emit, stop: StopCheck, *, max_staleness: float) -> None:
        """Find the potential: this pool version's cached one; else the family's newest epoch when the
        rows written since it are at most ``max_staleness`` of the pool (never for ``0`` or the PAPER
        mode; the fused cost's epoch brings the IDF weights it was solved under); else solve,
        warm-started from that newest potential, opening a new epoch under the current pool's IDF.
        """
        epochs = self.engine.epoch_values
        entry = epochs.potential(self.key)
        if entry is not None and self._usable(entry):
            self._use_entry(entry)
            return
        init_g = None
        latest = epochs.latest(self.family)
        if latest is not None and latest != self.key:
            previous = epochs.potential(latest)
            if previous is not None and self._usable(previous):
                since = int(previous.meta["pool_version"])
                staleness = self._staleness(since)
                if staleness is not None and max_staleness > 0 and staleness <= max_staleness:
                    self.key, self.epoch_version, self.staleness = latest, since, staleness
                    self._use_entry(previous)
                    return
                init_g = torch.from_numpy(previous.g.copy())
                self.warm_started = True
        max_iter = self.config.max_iter

        def on_iter(iteration: int, error: float) -> None:
            stop()
            emit(Progress(Stage.SOLVE, iteration, max_iter))

        keys = self.keys()  # the snapshot's own array for all rows
        paper = self.config.mode is Mode.PAPER
        domains = (
            domain_labels(self.arrays.domains.take(self.rows), np.arange(len(self.rows))) if paper else None
        )
        self.idf = self.features.idf  # a new epoch: the cost of this pool version
        trim_heap()  # the solve's blocks come on top of the pool, not of the load's freed heap pages
        self.potential = solve(
            self._x(),
            self.y,
            self.config,
            keys=keys,
            domains=domains,
            init_g=init_g,
            callback=on_iter,
            on_block=stop,
        )
        self.solved = True
        self.engine.metrics.solve_iterations.observe(self.potential.n_iter)
        self._apply_rows()

    def _staleness(self, since: int) -> float | None:
        """Share of the pool's rows written after pool version ``since``; None when an epoch of that
        version cannot serve this job."""
        if self.config.mode is Mode.PAPER or not 0 <= since < self.arrays.version:
            return None
        return stale_rows(self.arrays.row_versions, since) / max(1, len(self.arrays.ids))

    def _usable(self, entry: PotentialEntry) -> bool:
        """Whether a cached entry is a finite potential of this job's family; anything else (garbage a
        checksum cannot catch: wrong shape, NaN, foreign or malformed metadata; for the fused cost a
        missing or malformed IDF) is a miss."""
        try:
            p = potential_from_entry(entry)
            version = int(entry.meta["pool_version"])
        except (KeyError, TypeError, ValueError, OverflowError):
            p, version = None, -1
        rows = None if p is None else p.rows
        ok = (
            p is not None
            and entry.f is None
            and 0 <= version <= self.arrays.version
            and p.g.shape == (self.target.count,)
            and bool(torch.isfinite(p.g).all())
            and p.mode == self.config.mode
            and (self.config.relative_eps is not None or p.eps == self.config.eps)
            and (rows is None or not len(rows) or (rows.min() >= 0 and rows.max() < len(self.rows)))
            and self._usable_idf(entry.idf)
        )
        if not ok:
            LOG.warning("dual cache: unusable potential for %s; treated as a miss", self.key)
            self.engine.metrics.cache_events.labels("corrupt").inc()
        return ok

    def _usable_idf(self, idf: np.ndarray | None) -> bool:
        """Fused: IDF weights of the pool's sketch width, finite and positive; else none at all."""
        if self.cost.cost is not Cost.FUSED:
            return idf is None
        tf = self.arrays.sketches
        if idf is None or tf is None or idf.shape != (tf.shape[1],):
            return False
        return bool(np.isfinite(idf).all() and (idf > 0).all())

    def _use_entry(self, entry: PotentialEntry) -> None:
        self.cache_hit = True
        self.potential = potential_from_entry(entry)
        if entry.idf is not None:  # fused (checked): the cost the potential was solved under
            self.idf = self._frozen = np.array(entry.idf, dtype=np.float32)
        self.engine.epoch_values.remember(self.family, self.key, entry)
        self._apply_rows()

    def _apply_rows(self) -> None:
        """PAPER mode ranks only the kept domains' rows."""
        if self.potential.rows is not None:
            self.rows = self.rows[self.potential.rows]
            self.ids = Picked(self.arrays.ids, self.rows)

    def scores(self, emit: Emit, stop: StopCheck) -> RowScores:
        """Scores of ``self.rows``: the calibrated gradient of the epoch's row values over the pool as
        it is at this version (the values of the job's rows, exactly summed).

        With a sharded scorer and no epoch values in this process, one sharded pass whose values stay
        on the shards (only its exact sum, then top-k pairs or chosen rows, come back); otherwise
        the values in this process. Each row's value, the sum and so every score have the same
        bits either way.
        """
        g = self.potential.g.to(torch.float32)
        known = self._known(g.numpy())
        scorer = self.engine.scorer
        if known is None and isinstance(scorer, ShardedScorer):
            work = ScorePass(
                self._x(), self.y, g, self.potential.eps, self._snapshot(), self._on_block(emit, stop)
            )
            run = scorer.open_pass(work, self.ids)
            self._count_pass("sharded", len(self.rows))
            if not self.cache_hit:
                self._store_potential(run.total_value, len(self.rows))
            return ShardedScores(run)
        f, total = self._values(g, known, emit, stop)
        scores = calibrated_gradient(torch.from_numpy(f), total=total.to_float())
        return DenseScores(scores.numpy(), self.ids)

    def ids_at(self, positions: np.ndarray | Sequence[int]) -> list[str]:
        """The ids of the job's rows at ``positions`` (``self.ids`` is the snapshot's own column for all
        rows, else the picked rows of it: a ``str`` is made only for a row read)."""
        return self.ids.take(positions)

    def keys(self) -> np.ndarray:
        """``xxh64(id)`` of the job's rows (the snapshot's own array for all rows)."""
        keys: np.ndarray = self.arrays.keys if self.every_row else self.arrays.keys[self.rows]
        return keys

    def _known(self, g_np: np.ndarray) -> EpochValues | None:
        """The epoch's values kept in this process (or Redis) usable at this pool version."""
        a = self.arrays
        if not self.cache_hit:
            return None
        return self.engine.epoch_values.get(self.key, g_np, a.row_versions, a.version, idf=self.idf)

    def _values(
        self, g: torch.Tensor, known: EpochValues | None, emit: Emit, stop: StopCheck
    ) -> tuple[np.ndarray, ExactSum]:
        """The c-transform of the epoch's ``g`` for ``self.rows`` (float32), in this process, and
        their exact sum.

        Values kept from an earlier request of the epoch (``known``) serve the rows not written
        since; only the rows written since (or never scored) go through the c-transform, and the kept
        sum changes by the values that leave it (rows rescored, deleted or no longer among the rows)
        and the new ones: no pass over the unchanged rows' values. Without kept values, one pass over
        all rows (in process, or all of ``f`` back from the scorer)."""
        g_np = g.numpy()
        a, n_pool = self.arrays, len(self.arrays.ids)
        values = np.full(n_pool, np.nan, dtype=np.float32)
        if known is not None:
            values[: len(known.values)] = known.values
            keep = np.zeros(n_pool, dtype=bool)
            keep[self.rows] = True
            held = ~np.isnan(values)
            redo = keep & (~held | (a.row_versions > np.uint64(known.version)))
            leaving = held & ~(keep & ~redo)
            total = known.total - ExactSum.of(values[leaving]) if leaving.any() else known.total
            values[~keep] = np.nan
            rows = np.flatnonzero(redo)
            if len(rows):
                stop()
                if self._frozen is None:  # the pool version's own rows: a run is read in place
                    fresh = score_rows(self.features.x, rows, self.y, g, eps=self.potential.eps)
                else:
                    block = run_block_rows(self.y)
                    fresh = c_transform(
                        self._x(rows), self.y, g, eps=self.potential.eps, block_size=block
                    ).numpy()
                values[rows] = fresh
                total = total + ExactSum.of(fresh)
                emit(Progress(Stage.SCORE, len(rows), len(rows)))
            self._count_pass("incremental" if len(rows) else "cached", len(rows))
        else:
            work = ScorePass(
                self._x(), self.y, g, self.potential.eps, self._snapshot(), self._on_block(emit, stop)
            )
            trim_heap()  # the pass's blocks come on top of the pool, not of freed heap pages too
            full = self.engine.scorer(work).to(torch.float32).numpy()
            values[self.rows] = full
            total = ExactSum.of(full)
            self._count_pass("full", len(self.rows))
        if known is None or known.version != a.version:
            kept = EpochValues(a.version, values, total)
            self.engine.epoch_values.put(self.key, g_np, kept, share=True, idf=self.idf)
        f: np.ndarray = values[self.rows]
        if not self.cache_hit:
            self._store_potential(total.to_float(), len(f))
        return f, total

    def _count_pass(self, kind: str, rows: int) -> None:
        self.rows_scored = rows
        self.engine.metrics.scoring_passes.labels(kind).inc()
        self.engine.metrics.rows_scored.inc(rows)

    def _on_block(self, emit: Emit, stop: StopCheck) -> Callable[[int, int], None]:
        def on_block(done: int, total: int) -> None:
            stop()
            self.engine.metrics.blocks_scored.inc()
            emit(Progress(Stage.SCORE, done, total))

        return on_block

    def _snapshot(self) -> str:
        """Names the rows only (not the target): a distributed scorer keeps one snapshot for all targets."""
        a = self.arrays
        rows_hash = xxhash.xxh3_64_hexdigest(self.rows.tobytes())
        idf = "" if self.idf is None else ":" + xxhash.xxh3_64_hexdigest(self.idf.tobytes())
        return f"{a.name}:{a.uid}:v{a.version}:{self.cost.tag}{idf}:{rows_hash}"

    def _store_potential(self, f_sum: float, n: int) -> None:
        entry = potential_entry(
            self.potential, self.idf, self.arrays.version, self.target.content_hash, f_sum=f_sum, n=n
        )
        self.engine.duals.put(self.key, entry)
        self.engine.duals.set_latest(self.family, self.key)
        self.engine.epoch_values.remember(self.family, self.key, entry)
