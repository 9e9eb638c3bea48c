"""Cost ``auto``: the cost setting of a request, validated on its target set and cached with the potentials.

:func:`gotd.server.selection.validation.validate` does the math; this module decides when it runs,
turns its choice into solver options (fused cost at the chosen weight, epsilon relative to that cost's
scale) and keeps its result in the dual cache under a key naming everything it depends on (pool, uid
and version, the rows, the target set and its sketches, the measured fraction, the grid, the code), so
a repeated request reads one small entry instead of validating again. The choice is deterministic:
a cold request, a cache hit and a recompute after a cache failure give the same setting.

The validation runs when the effective cost is ``auto`` and the request sets none of
``embedding_weight``, ``epsilon`` and ``relative_epsilon``; otherwise the request's (or the server's)
settings are used and the report says so. Without sketches on every row there is nothing to choose
(the embedding cost); with fewer targets than the ``validation_min_targets`` setting (default 100:
below it the validation lost precision against the fixed setting on every corpus measured,
docs/evaluation.md) the fixed setting :data:`~gotd.server.selection.validation.FALLBACK` is used, the
same one the validation keeps when no setting beats it by one standard error.

Validation epochs: like a potential, a validation done at pool version ``v`` keeps serving later
versions of the pool for the same request (pool, rows, target set, grid, code) while the rows written
since ``v`` stay within the request's staleness bound (the fused cost's, ``max_staleness_fused`` by
default; ``0`` validates every version) and the measured fraction k/n moved by no more than that bound
(relative to its value at ``v``: a fixed ``k`` on a pool grown by a share s moves it by s). A grown
pool therefore reuses the chosen setting, and with it the potential epoch of that setting, instead of
validating again; the Summary names the version it was validated at. The newest validation of each
request is also kept in process, so a Redis failure does not change the choice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import xxhash

from gotd.cache.duals.cache import DualCache, cache_key
from gotd.cache.duals.codec import PotentialEntry
from gotd.cache.store.core import PoolArrays
from gotd.client.types import CostValidation
from gotd.client.types import SettingScore as ClientScore
from gotd.server.selection.algorithm import code_version
from gotd.server.selection.config import summary_rows
from gotd.server.selection.costs import Cost, complete_sketches, sketch_hash
from gotd.server.selection.validation import (
    FALLBACK,
    FIXED_GRID,
    LEARNED_SETTINGS,
    Validation,
    ValidationConfig,
    validate,
)
from gotd.server.service.config import Settings
from gotd.server.service.epochs import stale_rows
from gotd.server.service.lru import Lru
from gotd.server.service.requests import SolverParams, ValidationStatus
from gotd.server.service.targets import Target
from gotd.server.service.validation_codec import decode_validation, encode_validation

LOG = logging.getLogger(__name__)

__all__ = ["SCORE_FRACTION", "CostChooser", "validation_rows"]

#: Fraction of the pool the validation measures at for Score, which has no k.
SCORE_FRACTION = 0.05

#: Outcomes counted by ``on_outcome`` (``gotd_cost_validations{outcome}``).
OUTCOMES = ("validated", "cached", "epoch", "fallback", "bypassed", "no_sketches")


class CostChooser:
    """Chooses the cost setting of each request (thread-safe: the caches are locked LRUs)."""

    def __init__(
        self,
        settings: Settings,
        duals: DualCache,
        config: ValidationConfig | None = None,
        on_outcome: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        self._settings = settings
        self._duals = duals
        self._on_outcome = on_outcome
        self._newest: Lru[str, tuple[str, PotentialEntry]] = Lru(256)  # family -> newest key, entry
        grid = FIXED_GRID + (LEARNED_SETTINGS if settings.validation_learned_metric else ())
        self.config = config or ValidationConfig(grid=grid, min_targets=settings.validation_min_targets)
        sizes = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "threads"}  # not in results
        self._grid_tag = xxhash.xxh3_64_hexdigest(json.dumps(sizes).encode())

    def validates(self, solver: SolverParams) -> bool:
        """Whether the request's cost is chosen by the validation (not bypassed)."""
        return self._settings.cost == "auto" and not _fixed_by_request(solver)

    def choose(
        self,
        arrays: PoolArrays,
        rows: np.ndarray,
        target: Target,
        solver: SolverParams,
        *,
        k: int | None,
        sketched: Callable[[], bool],
        idf: Callable[[], np.ndarray | None],
        sketch_rows: Callable[[np.ndarray], np.ndarray],
        max_staleness: float = 0.0,
    ) -> tuple[SolverParams, CostValidation]:
        """The request's solver options with the chosen setting filled in, and the report.

        Parameters
        ----------
        arrays : PoolArrays
            The pool snapshot (its sketch rows are read through ``sketch_rows``: it need not hold them).
        rows : numpy.ndarray of int64
            Sorted eligible rows (the domain filter); the pool sample is drawn from them.
        target : Target
            The resolved target set.
        solver : SolverParams
            The request's options.
        k : int or None
            Candidates the request keeps (None for Score: :data:`SCORE_FRACTION` of the rows).
        sketched : callable
            Whether every row of the pool version has a sketch (kept per version, cheap).
        idf : callable
            The pool version's IDF weights, None when some row has no sketch (called only when the
            validation runs).
        sketch_rows : callable
            The snapshot's sketch rows of given sorted rows (the validation's sample only).
        max_staleness : float
            Share of the pool's rows that may have been written since a validation of an earlier
            pool version for it to serve this request (0: validate every version).
        """
        s = self._settings
        fixed = _fixed_by_request(solver) or ("" if s.cost == "auto" else f"the server's cost is {s.cost!r}")
        if fixed:
            self._on_outcome("bypassed")
            return solver, self._report(ValidationStatus.BYPASSED, fixed, solver)
        target_tf = target.sketches
        if target_tf is None or not complete_sketches(target_tf) or not sketched():
            return self._no_sketches(solver)
        if target.count < self.config.min_targets:
            self._on_outcome("fallback")
            why = f"{target.count} targets, fewer than {self.config.min_targets}: the fixed default setting"
            w, eps = FALLBACK.embedding_weight, FALLBACK.relative_eps  # the setting the rule keeps too
            fallback = replace(solver, cost=Cost.FUSED, embedding_weight=w, relative_eps=eps)
            return fallback, self._report(ValidationStatus.FALLBACK, why, fallback)
        fraction = SCORE_FRACTION if k is None else k / len(rows)
        q = float(f"{min(1.0, max(fraction, 1e-6)):.2g}")
        parts = self._family(arrays, rows, target)
        family = cache_key(**parts)
        key = cache_key(**parts, version=arrays.version, fraction=q)
        found = self._reuse(family, key, arrays, q, max_staleness)
        if found is None:  # reported as read back, so every path reports the same float32 scores
            weights = idf()
            if weights is None:  # not after sketched() said yes
                return self._no_sketches(solver)
            validation = self._validate(arrays, rows, target, q, sketch_rows, target_tf, weights)
            entry = self._store(key, validation, arrays.version)
            self._newest.put(family, (key, entry))
            self._duals.set_latest(family, key)
            result, since = decode_validation(entry, self.config.grid), arrays.version
            outcome = "validated"
        else:
            result, since = found
            outcome = "cached" if since == arrays.version else "epoch"
        self._on_outcome(outcome)
        chosen = result.chosen
        report = CostValidation(
            ValidationStatus.VALIDATED,
            _detail(result, result.fraction, self.config.margin) + _since(since, arrays, max_staleness),
            chosen.embedding_weight,
            chosen.relative_eps,
            tuple(
                ClientScore(
                    x.setting.embedding_weight,
                    x.setting.relative_eps,
                    x.recall,
                    x.mrr,
                    x.auc,
                    x.setting.metric_strength,
                )
                for x in result.scores
            ),
            result.fraction,
            result.held_out,
            result.pool_sample,
            cache_hit=outcome != "validated",
            metric_strength=chosen.metric_strength,
        )
        w, eps = chosen.embedding_weight, chosen.relative_eps
        params = replace(solver, cost=Cost.FUSED, embedding_weight=w, relative_eps=eps, metric=result.metric)
        return params, report

    def _no_sketches(self, solver: SolverParams) -> tuple[SolverParams, CostValidation]:
        self._on_outcome("no_sketches")
        why = "rows sent as embeddings without text have no n-gram sketch: the embedding cost"
        return solver, CostValidation(ValidationStatus.NO_SKETCHES, why, 1.0, solver.relative_eps)

    def _report(self, status: ValidationStatus, detail: str, solver: SolverParams) -> CostValidation:
        s = self._settings
        weight = solver.embedding_weight if solver.embedding_weight is not None else s.embedding_weight
        if solver.cost is Cost.EMBEDDING or (solver.cost is None and s.cost == "embedding"):
            weight = 1.0
        relative = solver.relative_eps if solver.eps is None else None
        if solver.eps is None and relative is None:
            relative = s.relative_eps
        return CostValidation(status, detail, weight, relative)

    def _validate(
        self,
        arrays: PoolArrays,
        rows: np.ndarray,
        target: Target,
        q: float,
        sketch_rows: Callable[[np.ndarray], np.ndarray],
        target_tf: np.ndarray,
        idf: np.ndarray,
    ) -> Validation:
        started = time.perf_counter()
        picked = validation_rows(self.config, np.asarray(arrays.keys), rows)
        result = validate(
            arrays.vectors[picked],
            sketch_rows(picked),
            np.asarray(arrays.keys)[picked],
            idf,
            target.vectors.numpy(),
            target_tf,
            seed=int(xxhash.xxh3_64_intdigest(target.content_hash.encode())),
            fraction=q,
            config=self.config,
        )
        LOG.info(
            "cost validation of %s on %d targets: %s in %.0f ms",
            arrays.name,
            target.count,
            result.chosen.label,
            (time.perf_counter() - started) * 1e3,
        )
        return result

    def _family(self, arrays: PoolArrays, rows: np.ndarray, target: Target) -> dict[str, str]:
        """Every part of a validation's key but the pool version and the measured fraction: the
        validations one request gets as its pool grows."""
        every = len(rows) == len(arrays.ids)
        return {
            "kind": "cost_validation",
            "pool": arrays.name,
            "pool_uid": arrays.uid,
            "rows": "all" if every else xxhash.xxh3_64_hexdigest(rows.tobytes()),
            "target": target.content_hash,
            "sketch": sketch_hash(target.sketches),
            "grid": self._grid_tag,
            "model": arrays.model,
            "code": str(code_version(None)),
        }

    def _reuse(
        self, family: str, key: str, arrays: PoolArrays, q: float, max_staleness: float
    ) -> tuple[Validation, int] | None:
        """This version's validation (``key``), else the family's newest while the rows written since
        its version are at most ``max_staleness`` of the pool and its fraction is within
        ``max_staleness`` of ``q`` (relative); with the version it was validated at. While Redis fails,
        this process's newest of the family serves (the choice does not change)."""
        held = self._newest.get(family)
        found = self._read(key, held)
        if found is not None or max_staleness <= 0:
            return None if found is None else found[:2]
        newest = self._duals.get_latest(family)
        if newest is None and held is not None and not self._duals.healthy:
            newest = held[0]
        if newest is None or newest == key:
            return None
        found = self._read(newest, held)
        if found is None or not 0 <= found[1] < arrays.version:
            return None
        if abs(q - found[0].fraction) > max_staleness * found[0].fraction + 1e-12:
            return None  # another share of the pool measured: k moved more than the pool grew
        if stale_rows(arrays.row_versions, found[1]) / max(1, len(arrays.ids)) > max_staleness:
            return None  # the same test as the potential epoch's
        self._newest.put(family, (newest, found[2]))  # kept: it serves on while Redis fails
        return found[:2]

    def _read(
        self, key: str, held: tuple[str, PotentialEntry] | None
    ) -> tuple[Validation, int, PotentialEntry] | None:
        """The validation under ``key`` and its pool version; this process's copy (``held``, when it
        is ``key``'s) while Redis fails; anything unusable is a miss (validated again, never trusted)."""
        entry = self._duals.get(key)
        if entry is None and held is not None and held[0] == key and not self._duals.healthy:
            entry = held[1]
        if entry is None:
            return None
        try:
            return decode_validation(entry, self.config.grid), int(entry.meta["pool_version"]), entry
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            LOG.warning("dual cache: unusable cost validation under %s; validating again", key)
            return None

    def _store(self, key: str, result: Validation, version: int) -> PotentialEntry:
        entry = encode_validation(result, self.config.grid, version)
        self._duals.put(key, entry)
        return entry


def validation_rows(config: ValidationConfig, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` (sorted) that :func:`validate` reads: its ranked sample and, with learned
    settings, the rows their metric is fitted against, the smallest id hashes. Validating on these
    alone is validating on all of ``rows``, bit for bit (the sample and the fit rows are the smallest
    hashes of any set that holds them), and no other row's sketch is read."""
    size = config.pool_sample + (config.fit_sample if any(s.learned for s in config.grid) else 0)
    picked: np.ndarray = rows[summary_rows(keys[rows], size)]
    return picked


def _since(since: int, arrays: PoolArrays, max_staleness: float) -> str:
    """The Summary's note on a validation of an earlier pool version serving this one ("" if none)."""
    if since == arrays.version:
        return ""
    share = stale_rows(arrays.row_versions, since) / max(1, len(arrays.ids))
    return (
        f"; validated at pool version {since} ({share:.2%} of the rows written since, within "
        f"max_staleness {max_staleness:g})"
    )


def _detail(result: Validation, q: float, margin: float) -> str:
    """How the setting was chosen, for the Summary (``margin``: standard errors the best must clear)."""
    if result.kept_default:
        errors = "one standard error" if margin == 1.0 else f"{margin:g} standard errors"
        return (
            f"default kept: no setting of {len(result.scores)} beat it by {errors} of held-out "
            f"recall at {q:g} of the pool"
        )
    best = f"best of {len(result.scores)} settings by held-out recall at {q:g} of the pool"
    if result.chosen.learned:
        best += (
            f"; a discriminant direction of strength {result.chosen.metric_strength:g} learned from the "
            "target set (logistic target-vs-pool discriminator), refitted on the whole target set"
        )
    return best


def _fixed_by_request(solver: SolverParams) -> str:
    """Why the request's own settings bypass the validation ("" when they do not)."""
    if solver.cost is not None and solver.cost is not Cost.AUTO:
        return f"the request sets cost {solver.cost.value!r}"
    named = [
        name
        for name, value in (
            ("embedding_weight", solver.embedding_weight),
            ("epsilon", solver.eps),
            ("relative_epsilon", solver.relative_eps),
        )
        if value is not None
    ]
    return f"the request sets {' and '.join(named)}" if named else ""
