"""The validated cost (``cost auto`` of the server) and every fixed setting of its grid, for the evaluation.

Importing this module registers:

- ``gotd-fused-w{w}-rel{c}`` for every setting of :data:`gotd.server.selection.validation.DEFAULT_GRID`:
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
from gotd.server.selection.validation import DEFAULT_GRID, Setting, ValidationConfig, validate

__all__ = ["AutoSelector", "grid_name"]


def grid_name(setting: Setting) -> str:
    """Method name of a fixed grid setting."""
    return f"gotd-fused-w{setting.embedding_weight:g}-rel{setting.relative_eps:g}"


@dataclass(slots=True)
class AutoSelector:
    """Validate the grid on the target set, then select with the chosen setting (see the module docstring)."""

    name: str
    config: ValidationConfig = field(default_factory=ValidationConfig)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        pool_tf, _ = sketch_rows(inp.pool_texts)
        target_tf, _ = sketch_rows(inp.target_texts)
        n = len(inp.pool_texts)
        start = time.perf_counter()
        seed = xxhash.xxh3_64_intdigest("\x1f".join(inp.target_texts).encode())
        result = validate(
            inp.pool_vectors,
            pool_tf,
            id_keys([str(i) for i in range(n)]),
            idf_from_df(document_frequency(pool_tf), n),
            inp.target_vectors,
            target_tf,
            seed=seed,
            fraction=float(f"{min(1.0, k / n):.2g}"),
            config=self.config,
        )
        spent = time.perf_counter() - start
        chosen = result.chosen
        w, c = chosen.embedding_weight, chosen.relative_eps
        inner = FusedSelector(self.name, Cost.FUSED, w, relative_eps=c)
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


def _fixed(name: str, options: MethodOptions, *, weight: float, relative_eps: float) -> Selector:
    del options
    return FusedSelector(name, Cost.FUSED, weight, relative_eps=relative_eps)


def _register() -> None:
    for setting in DEFAULT_GRID:
        name = grid_name(setting)
        w, c = setting.embedding_weight, setting.relative_eps
        register_method(name, partial(_fixed, weight=w, relative_eps=c), replace=True)
        METHOD_NOTES.setdefault(
            name, f"GOT-D, fused cost {w:g} · embedding + {1 - w:g} · n-gram; ε = {c:g} × median cost."
        )
    register_method("gotd-auto", lambda n, o: AutoSelector(n), replace=True)
    variants = {
        "gotd-auto-argmax": (
            ValidationConfig(margin=0.0),
            "`gotd-auto` taking the best setting even when "
            "it beats the default by less than one standard error.",
        ),
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
