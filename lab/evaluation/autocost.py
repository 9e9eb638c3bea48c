"""The validated cost (``cost auto`` of the server) and every fixed setting of its grid, for the evaluation.

Importing this module registers:

- ``gotd-fused-w{w}-rel{c}`` for every setting of :data:`gotd.server.selection.validation.FIXED_GRID`:
  the fused cost at embedding weight ``w``, epsilon ``c`` times the median pool-target cost;
- ``gotd-auto-argmax``: the validation without the one-standard-error rule (the best setting is taken
  whenever it is ahead of the default); ``gotd-auto-always`` and ``gotd-auto-argmax-always``: both with
  no small-target fallback (they validate down to one target per fold), to measure where the fallback
  threshold belongs;
- ``gotd-auto``: what ``Select`` does with ``cost auto`` and no explicit weight or epsilon —
  :func:`gotd.server.selection.validation.validate` on the task's target set (its texts and embeddings
  only, never labels; the pool sample drawn by hashed row ids, the folds seeded by the targets'
  content, the recall measured at the task's ``k``), then the fused selection at the chosen setting.
  Its ``diagnostics`` hold every setting's validation scores, so the report can say what another
  criterion (mean reciprocal rank, AUC) would have chosen on the same task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import xxhash

from gotd.lab.evaluation.fused import FusedSelector, sketch_rows
from gotd.lab.evaluation.methods import MethodOptions, Selector, register_method
from gotd.lab.evaluation.report import METHOD_NOTES
from gotd.lab.evaluation.tasks import SelectionInput
from gotd.server.selection.costs import Cost
from gotd.server.selection.kmeans import id_keys
from gotd.server.selection.sketches import document_frequency, idf_from_df
from gotd.server.selection.validation import (
    FIXED_GRID,
    LEARNED_SETTINGS,
    Setting,
    ValidationConfig,
    learned_metric,
    validate,
)

__all__ = ["AutoSelector", "grid_name"]


#: Metric strengths measured as fixed (hindsight) settings at w = 0.5, relative epsilon 0.05.
STRENGTHS = (0.003, 0.01, 0.03, 0.1, 0.25, 1.0)


def grid_name(setting: Setting) -> str:
    """Method name of a grid setting."""
    return f"gotd-fused-{setting.label}"


def _inputs(inp: SelectionInput) -> dict[str, Any]:
    """The validation's view of a task: sketches, hashed row ids, the pool's IDF (never labels)."""
    pool_tf, _ = sketch_rows(inp.pool_texts)
    target_tf, _ = sketch_rows(inp.target_texts)
    n = len(inp.pool_texts)
    return {
        "pool_vectors": inp.pool_vectors,
        "pool_tf": pool_tf,
        "pool_keys": id_keys([str(i) for i in range(n)]),
        "idf": idf_from_df(document_frequency(pool_tf), n),
        "target_vectors": inp.target_vectors,
        "target_tf": target_tf,
    }


@dataclass(slots=True)
class LearnedSelector:
    """A learned-metric setting without validation: the metric the validation would select with."""

    name: str
    setting: Setting
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        metric = learned_metric(**_inputs(inp), setting=self.setting)
        s = self.setting
        w, c = s.embedding_weight, s.relative_eps
        inner = FusedSelector(self.name, Cost.FUSED, w, relative_eps=c, metric=metric)
        ranking = inner.rank(inp, k)
        self.diagnostics = inner.diagnostics
        return ranking


@dataclass(slots=True)
class AutoSelector:
    """Validate the grid on the target set, then select with the chosen setting (see the module docstring)."""

    name: str
    config: ValidationConfig = field(default_factory=ValidationConfig)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        n = len(inp.pool_texts)
        start = time.perf_counter()
        seed = xxhash.xxh3_64_intdigest("\x1f".join(inp.target_texts).encode())
        result = validate(
            **_inputs(inp), seed=seed, fraction=float(f"{min(1.0, k / n):.2g}"), config=self.config
        )
        spent = time.perf_counter() - start
        chosen = result.chosen
        w, c = chosen.embedding_weight, chosen.relative_eps
        inner = FusedSelector(self.name, Cost.FUSED, w, relative_eps=c, metric=result.metric)
        ranking = inner.rank(inp, k)
        self.diagnostics = {
            **inner.diagnostics,
            "chosen": grid_name(chosen),
            "fallback": result.fallback,
            "kept_default": result.kept_default,
            "validate_seconds": spent,
            "scores": {grid_name(s.setting): [s.recall, s.mrr, s.auc] for s in result.scores},
        }
        return ranking


def _auto(name: str, options: MethodOptions, *, config: ValidationConfig) -> Selector:
    del options
    return AutoSelector(name, config)


def _learned(name: str, options: MethodOptions, *, setting: Setting) -> Selector:
    del options
    return LearnedSelector(name, setting)


def _fixed(name: str, options: MethodOptions, *, weight: float, relative_eps: float) -> Selector:
    del options
    return FusedSelector(name, Cost.FUSED, weight, relative_eps=relative_eps)


#: Smaller validations measured against the full one, for the grid with and without the learned settings
#: (name suffix: what is smaller): 2 folds instead of 3; 512 pool rows fitted against instead of 1,024;
#: 512 pool rows ranked and 512 fitted against instead of 1,024 each.
CHEAPER: dict[str, tuple[str, Callable[[tuple[Setting, ...]], ValidationConfig]]] = {
    "f2": ("2 folds", lambda grid: ValidationConfig(grid=grid, folds=2)),
    "fit512": ("512 pool rows fitted against", lambda grid: ValidationConfig(grid, fit_sample=512)),
    "s512": (
        "512 pool rows ranked and fitted against",
        lambda grid: ValidationConfig(grid, pool_sample=512, fit_sample=512),
    ),
}


def _cheaper() -> dict[str, tuple[ValidationConfig, str]]:
    out: dict[str, tuple[ValidationConfig, str]] = {}
    for suffix, (text, make) in CHEAPER.items():
        for kind, grid in (("learned", FIXED_GRID + LEARNED_SETTINGS), ("fixed", FIXED_GRID)):
            note = f"`gotd-auto-{kind}` with a smaller validation: {text}."
            out[f"gotd-auto-{kind}-{suffix}"] = (make(grid), note)
    return out


def _register() -> None:
    for setting in FIXED_GRID:
        name = grid_name(setting)
        w, c = setting.embedding_weight, setting.relative_eps
        register_method(name, partial(_fixed, weight=w, relative_eps=c), replace=True)
        METHOD_NOTES.setdefault(
            name, f"GOT-D, fused cost {w:g} · embedding + {1 - w:g} · n-gram; ε = {c:g} × median cost."
        )
    register_method("gotd-auto", lambda n, o: AutoSelector(n), replace=True)
    for strength in STRENGTHS:
        setting = Setting(0.5, 0.05, strength)
        name = grid_name(setting)
        register_method(name, partial(_learned, setting=setting), replace=True)
        METHOD_NOTES.setdefault(
            name,
            f"GOT-D, fused cost w = 0.5, ε = 0.05 × median cost, plus the discriminant direction of "
            f"strength {strength:g} learned from the target set (logistic target-vs-pool discriminator), "
            "without validation.",
        )
    variants = {
        "gotd-auto-argmax": (
            ValidationConfig(margin=0.0),
            "`gotd-auto` taking the best setting even when "
            "it beats the default by less than one standard error.",
        ),
        "gotd-auto-learned": (
            ValidationConfig(grid=FIXED_GRID + LEARNED_SETTINGS),
            "`gotd-auto` with the learned-metric settings in the grid ("
            + ", ".join(s.label for s in LEARNED_SETTINGS)
            + ").",
        ),
        "gotd-auto-fixed": (
            ValidationConfig(grid=FIXED_GRID),
            "`gotd-auto` on the fixed settings only (no learned metric).",
        ),
        **_cheaper(),
        "gotd-auto-always": (
            ValidationConfig(min_targets=3),
            "`gotd-auto` without the small-target fallback (validates down to 3 targets).",
        ),
        "gotd-auto-argmax-always": (
            ValidationConfig(min_targets=3, margin=0.0),
            "`gotd-auto-argmax` without the small-target fallback.",
        ),
    }
    for name, (config, note) in variants.items():
        register_method(name, partial(_auto, config=config), replace=True)
        METHOD_NOTES.setdefault(name, note)
    METHOD_NOTES.setdefault(
        "gotd-auto",
        "GOT-D with the cost validated on the target set (server `cost auto`): the grid setting whose "
        "ranking puts the most held-out targets in the top k of a pool sample.",
    )


_register()
