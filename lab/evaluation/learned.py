"""Alternatives to the server's learned cost, measured as fixed settings (no validation).

The server's learned family is the discriminant direction of :mod:`gotd.server.selection.metric`
(registered as ``gotd-fused-w0.5-rel0.05-metric{λ}`` by :mod:`gotd.lab.evaluation.autocost`).
Importing this module registers what it was measured against (docs/evaluation.md, "Learned metric"),
from the same discriminator fitted on the same rows (:func:`gotd.server.selection.validation.fit_rows`:
the targets against the pool rows after the validation's ranked sample), fused cost at w = 0.5,
ε = 0.05 × median cost:

- ``gotd-discriminator``: the pool ranked by the discriminator's score alone (no OT);
- ``gotd-fused-w0.5-rel0.05-diag{λ}`` and ``-sq{λ}``: a diagonal metric read off the discriminator's
  standardised coefficients ``beta``, ``m_j ∝ 1 + λ |beta_j| / mean |beta|`` (``diag``) or
  ``1 + λ beta_j^2 / mean beta^2`` (``sq``), normalised so that each half's spread over the fitted rows
  is kept; the fused rows scaled column by column by ``sqrt(m)`` (materialised: the pools are small).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from gotd.lab.evaluation.autocost import _inputs
from gotd.lab.evaluation.methods import MethodOptions, Selector, register_method
from gotd.lab.evaluation.report import METHOD_NOTES
from gotd.lab.evaluation.tasks import SelectionInput
from gotd.server.selection.foldrank import unit_rows
from gotd.server.selection.metric import discriminant
from gotd.server.selection.modes import Mode, SelectionConfig, score, solve, top_k
from gotd.server.selection.sketches import fused_matrix
from gotd.server.selection.validation import ValidationConfig, fit_rows

__all__ = ["VariantSelector"]

W, REL = 0.5, 0.05
VARIANTS = {"diag": (1.0, 4.0, 16.0), "sq": (4.0, 16.0)}


@dataclass(slots=True)
class VariantSelector:
    """One variant (see the module docstring): ``kind`` is discriminator, diag or sq."""

    name: str
    kind: str
    strength: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        data = _inputs(inp)
        positives, negatives = fit_rows(**data, config=ValidationConfig())
        fitted = discriminant(positives, negatives)
        pool = (data["pool_vectors"], unit_rows(data["pool_tf"], data["idf"]))
        if self.kind == "discriminator":
            projected = np.concatenate(pool, axis=1).astype(np.float64) @ fitted.direction
            return np.argsort(-projected, kind="stable")[:k].astype(np.int64)
        rows = np.concatenate([np.concatenate(positives, 1), np.concatenate(negatives, 1)]).astype(np.float64)
        variance = rows.var(axis=0)
        beta = np.abs(fitted.direction * np.sqrt(variance))  # the standardised coefficients
        a = beta if self.kind == "diag" else beta**2
        m = 1.0 + self.strength * a / max(float(a.mean()), 1e-300)
        d = fitted.dim
        for half in (slice(0, d), slice(d, len(m))):
            m[half] *= float(variance[half].sum()) / max(float((m[half] * variance[half]).sum()), 1e-300)
        u = np.sqrt(m).astype(np.float32)
        x, y = (
            torch.from_numpy(fused_matrix(data[f"{side}_vectors"], data[f"{side}_tf"], data["idf"], W) * u)
            for side in ("pool", "target")
        )
        config = SelectionConfig(mode=Mode.AUTO, eps=0.1, relative_eps=REL, seed=inp.seed)
        potential = solve(x, y, config)
        self.diagnostics = {
            "converged": potential.converged,
            "n_iter": potential.n_iter,
            "marginal_error": potential.marginal_error,
        }
        return np.asarray([r for r, _ in top_k(score(x, y, potential).numpy(), k)], dtype=np.int64)


def _make(name: str, options: MethodOptions, *, kind: str, strength: float) -> Selector:
    del options
    return VariantSelector(name, kind, strength)


def _register() -> None:
    register_method("gotd-discriminator", partial(_make, kind="discriminator", strength=0.0), replace=True)
    note = "The pool ranked by the target-vs-pool discriminator's score alone (no OT)."
    METHOD_NOTES.setdefault("gotd-discriminator", note)
    for kind, strengths in VARIANTS.items():
        what = "|β|" if kind == "diag" else "β²"
        for strength in strengths:
            name = f"gotd-fused-w0.5-rel0.05-{kind}{strength:g}"
            register_method(name, partial(_make, kind=kind, strength=strength), replace=True)
            text = (
                f"GOT-D, fused cost w = 0.5, ε = 0.05 × median cost, diagonal metric 1 + {strength:g} {what}."
            )
            METHOD_NOTES.setdefault(name, text)


_register()
