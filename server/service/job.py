"""One selection job: pool rows × target × configuration — finds or solves the potential, then scores.

The scores are always the calibrated gradient of the c-transform of the float32 potential (the one
ranking rule), whichever way the potential was obtained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
import xxhash

from gotd.cache.duals.cache import DualCache
from gotd.cache.duals.codec import PotentialEntry
from gotd.cache.store.core import PoolArrays
from gotd.server.ot.rows import Rows, take
from gotd.server.ot.sinkhorn import c_transform, calibrated_gradient
from gotd.server.selection.costs import Features
from gotd.server.selection.modes import Mode, Potential, SelectionConfig, solve
from gotd.server.service.metrics import Metrics
from gotd.server.service.requests import Progress, SelectEvent, Stage
from gotd.server.service.targets import Target

LOG = logging.getLogger(__name__)
Emit = Callable[[SelectEvent], None]
StopCheck = Callable[[], None]


class Scorer(Protocol):
    """Computes the c-transform ``f`` (n,) of ``g`` over pool rows ``x`` (n, d).

    ``snapshot`` names the rows (pool, uid, version and row selection), so a distributed scorer
    can keep the pool's shards where they are and ship only ``g`` per request. ``callback(done,
    total)`` is called after each block and may raise to stop the work.
    """

    def __call__(
        self,
        x: Rows,
        y: torch.Tensor,
        g: torch.Tensor,
        *,
        eps: float,
        snapshot: str,
        callback: Callable[[int, int], None],
    ) -> torch.Tensor: ...


def local_scorer(
    x: Rows,
    y: torch.Tensor,
    g: torch.Tensor,
    *,
    eps: float,
    snapshot: str,
    callback: Callable[[int, int], None],
) -> torch.Tensor:
    """The in-process scorer: one blockwise c-transform pass."""
    return c_transform(x, y, g, eps=eps, callback=callback)


class JobHost(Protocol):
    """What a job needs from the engine that runs it: the dual cache, metrics, the scorer, row scores."""

    @property
    def duals(self) -> DualCache:
        """The dual cache of the potentials."""

    @property
    def metrics(self) -> Metrics:
        """The service metrics."""

    @property
    def scorer(self) -> Scorer:
        """The c-transform pass (in process or on Ray)."""

    def cached_scores(self, key: str) -> np.ndarray | None:
        """Row values of a potential, when still held in memory."""

    def remember_scores(self, key: str, scores: np.ndarray) -> None:
        """Keep the row values of a potential for the next request."""


class Job:
    """One pool × target × configuration: finds or solves the potential, then scores."""

    def __init__(
        self,
        engine: JobHost,
        arrays: PoolArrays,
        features: Features,
        y: torch.Tensor,
        rows: np.ndarray,
        target: Target,
        config: SelectionConfig,
        family: str,
        timings: dict[str, float],
    ) -> None:
        self.engine = engine
        self.arrays = arrays
        self.features = features
        self.y = y
        self.rows = rows
        self.target = target
        self.config = config
        self.family = family
        self.key = f"{family}:v{arrays.version}"
        self.cache_hit = False
        self.warm_started = False
        self.entry_meta: Mapping[str, Any] | None = None
        self.timings = timings
        self.potential: Potential
        self.ids: np.ndarray = np.asarray(arrays.ids, dtype=object)[rows]

    @property
    def every_row(self) -> bool:
        """Whether the job's rows are the whole pool, in order (sorted and unique, so ``arange(n)``)."""
        return len(self.rows) == len(self.arrays.ids)

    def _x(self, rows: np.ndarray | None = None) -> Rows:
        """Feature rows (embeddings or fused rows) of ``rows`` (default: the job's rows, no copy for all)."""
        if rows is None:
            if self.every_row:
                return self.features.x
            rows = self.rows
        return take(self.features.x, torch.from_numpy(rows))

    def embeddings(self) -> np.ndarray:
        """Unit embeddings of the job's rows (the pool's own array, not a copy, for all rows)."""
        return self.arrays.vectors if self.every_row else self.arrays.vectors[self.rows]

    def potential_for(self, emit: Emit, stop: StopCheck, *, reuse_latest: bool = False) -> None:
        """Find the potential: this pool version's cached one, else solve (warm-started from the newest
        cached potential of an earlier version). With ``reuse_latest`` (Score), that newest cached
        potential is used as it is, without a solve, so candidates added since are scored cheaply.
        """
        duals = self.engine.duals
        entry = duals.get(self.key)
        if entry is not None and self._usable(entry):
            self._use_entry(entry)
            return
        init_g = None
        latest = duals.get_latest(self.family)
        if latest is not None and latest != self.key:
            previous = duals.get(latest)
            if previous is not None and self._usable(previous):
                if reuse_latest and previous.rows is None:
                    self._use_entry(previous)
                    return
                init_g = torch.from_numpy(previous.g.copy())
                self.warm_started = True
        max_iter = self.config.max_iter

        def on_iter(iteration: int, error: float) -> None:
            stop()
            emit(Progress(Stage.SOLVE, iteration, max_iter))

        keys = np.asarray(self.arrays.keys)[self.rows]
        domains = _domain_labels(self.arrays.domains, self.rows) if self.config.mode is Mode.PAPER else None
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
        self.engine.metrics.solve_iterations.observe(self.potential.n_iter)
        self._apply_rows()

    def _usable(self, entry: PotentialEntry) -> bool:
        """Whether a cached entry is a finite potential of this job's family; anything else (garbage a
        checksum cannot catch: wrong shape, NaN, foreign or malformed metadata) is a miss."""
        try:
            p = _potential_from_entry(entry)
            for name, kind in (("f_sum", float), ("n", int), ("pool_version", int)):
                kind(entry.meta.get(name, 0))
        except (KeyError, TypeError, ValueError, OverflowError):
            p = None
        rows = None if p is None else p.rows
        ok = (
            p is not None
            and p.g.shape == (self.target.count,)
            and bool(torch.isfinite(p.g).all())
            and p.mode == self.config.mode
            and (self.config.relative_eps is not None or p.eps == self.config.eps)
            and (rows is None or not len(rows) or (rows.min() >= 0 and rows.max() < len(self.rows)))
        )
        if not ok:
            LOG.warning("dual cache: unusable potential for %s; treated as a miss", self.key)
            self.engine.metrics.cache_events.labels("corrupt").inc()
        return ok

    def _use_entry(self, entry: PotentialEntry) -> None:
        self.cache_hit = True
        self.entry_meta = entry.meta
        self.potential = _potential_from_entry(entry)
        self._apply_rows()

    def scores_of(self, positions: np.ndarray) -> np.ndarray | None:
        """Scores of some of ``self.rows`` without a pass over the pool, or None when unknown.

        Uses the sum of ``f`` over the pool recorded with a cached potential: a candidate that was
        in the pool at that version gets :math:`f_i - (F - f_i)/(n-1)` (what Select gave it); one
        added or changed since gets :math:`f_i - F/n` (the same rule, with the n others).
        """
        meta = self.entry_meta
        if meta is None or "f_sum" not in meta or int(meta.get("n", 0)) < 2:
            return None
        rows = self.rows[positions]
        g = self.potential.g.to(torch.float32)
        f = c_transform(self._x(rows), self.y, g, eps=self.potential.eps).double().numpy()
        total, n = float(meta["f_sum"]), int(meta["n"])
        known = np.asarray(self.arrays.row_versions)[rows] <= int(meta["pool_version"])
        out: np.ndarray = np.where(known, f - (total - f) / (n - 1), f - total / n)
        return out

    def _apply_rows(self) -> None:
        """PAPER mode ranks only the kept domains' rows."""
        if self.potential.rows is not None:
            self.rows = self.rows[self.potential.rows]
            self.ids = np.asarray(self.arrays.ids, dtype=object)[self.rows]

    def scores(self, emit: Emit, stop: StopCheck) -> np.ndarray:
        """Scores of ``self.rows`` (calibrated gradient of the c-transform of the potential).

        On a dual-cache hit the scores of the same key computed earlier in this process are reused:
        they are what the c-transform would give again.
        """
        known = self.engine.cached_scores(self.key) if self.cache_hit else None
        if known is not None and len(known) == len(self.rows):
            return known
        n = len(self.rows)

        def on_block(done: int, total: int) -> None:
            stop()
            self.engine.metrics.blocks_scored.inc()
            emit(Progress(Stage.SCORE, done, total))

        g = self.potential.g.to(torch.float32)
        # Names the rows only (not the target): a distributed scorer keeps one pool snapshot for all targets.
        a = self.arrays
        rows_hash = xxhash.xxh3_64_hexdigest(self.rows.tobytes())
        snapshot = f"{a.name}:{a.uid}:v{a.version}:{self.features.tag}:{rows_hash}"
        f = self.engine.scorer(
            self._x(), self.y, g, eps=self.potential.eps, snapshot=snapshot, callback=on_block
        )
        scores = calibrated_gradient(f).numpy().astype(np.float32, copy=False)
        self.engine.remember_scores(self.key, scores)
        if not self.cache_hit:
            self._store_potential(float(f.double().sum()), n)
        return scores

    def _store_potential(self, f_sum: float, n: int) -> None:
        p = self.potential
        rows = None
        if p.rows is not None:
            rows = np.asarray(p.rows, dtype=np.int64)
        entry = PotentialEntry(
            g=p.g.detach().cpu().numpy().astype(np.float32),
            rows=rows,
            meta={
                "mode": p.mode.value,
                "eps": p.eps,
                "n_iter": p.n_iter,
                "marginal_error": p.marginal_error,
                "converged": p.converged,
                "cost": p.cost,
                "pool_version": self.arrays.version,
                "target_hash": self.target.content_hash,
                "f_sum": f_sum,
                "n": n,
                "created_at": time.time(),
            },
        )
        self.engine.duals.put(self.key, entry)
        self.engine.duals.set_latest(self.family, self.key)


def _potential_from_entry(entry: PotentialEntry) -> Potential:
    meta = entry.meta
    return Potential(
        g=torch.from_numpy(np.array(entry.g, dtype=np.float32)),
        mode=Mode(str(meta["mode"])),
        eps=float(meta["eps"]),
        n_iter=int(meta["n_iter"]),
        marginal_error=float(meta["marginal_error"]),
        converged=bool(meta["converged"]),
        cost=float(meta["cost"]),
        rows=None if entry.rows is None else np.asarray(entry.rows, dtype=np.int64),
    )


def _domain_labels(domains: list[str] | np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Integer domain labels of ``rows`` when every row has a domain; else None (cluster instead)."""
    picked = np.asarray(domains, dtype=object)[rows]
    if len(picked) == 0 or any(not d for d in picked):
        return None
    _, labels = np.unique(picked.astype(str), return_inverse=True)
    return labels.astype(np.int64)
