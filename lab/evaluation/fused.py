"""GOT-D with the fused cost, a relative epsilon and near-duplicate exclusion, for the evaluation (issue 10).

The selectors here take the engine's own path, so the evaluation measures what ``Select`` does:
sketch rows as the store keeps them (:func:`gotd.server.selection.sketches.tf_rows`, computed once per
distinct text, like cached embeddings), the pool's IDF and fused rows
(:func:`gotd.server.selection.costs.pool_features`), the targets in the same space
(:func:`gotd.server.selection.costs.target_features`), then :func:`gotd.server.selection.modes.solve`
in ``auto``
mode (exact for the evaluation's pools), the calibrated gradient of the c-transform and
:func:`gotd.server.selection.modes.top_k`. Importing this module registers (``w`` = embedding weight):

- ``gotd-fused-w{w}`` for ``w`` in 0.3, 0.5, 0.7: fused cost, epsilon 0.1 (the run's ``eps``);
- ``gotd-fused-w{w}-rel{c}`` and ``gotd-emb-rel{c}`` for ``c`` in 0.03, 0.05, 0.1: epsilon ``c``
  times the median pool-target cost (fused, or the paper's embedding cost);
- ``gotd-default``: the server's default settings (``Settings``: cost ``auto`` — fused, as every
  evaluation text has a sketch — with its embedding weight and epsilon);
- a ``-nodup`` suffix on ``gotd-default`` and ``gotd-fused-w0.5``: candidates whose embedding has
  cosine > 0.95 to a target are ranked after all others (the ``near_duplicate_cosine`` option).

Times exclude sketching, as they exclude embedding: ``diagnostics['sketch_seconds']`` reports the
time spent sketching texts not seen before by the process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gotd.lab.evaluation.methods import MethodOptions, Selector, register_method
from gotd.lab.evaluation.report import METHOD_NOTES
from gotd.lab.evaluation.tasks import SelectionInput
from gotd.server.selection.costs import (
    DEFAULT_EMBEDDING_WEIGHT,
    Cost,
    near_duplicates,
    pool_features,
    target_features,
)
from gotd.server.selection.metric import LearnedMetric
from gotd.server.selection.modes import Mode, SelectionConfig, score, solve, top_k
from gotd.server.selection.nearcopy import DEFAULT_NEAR_COPY_COSINE, distinct_top_k
from gotd.server.selection.sketches import SKETCH_BUCKETS, tf_rows

__all__ = ["DUP_COSINE", "FusedSelector", "sketch_rows"]

#: Cosine to a target embedding above which a pool row counts as a near-duplicate of the target set.
DUP_COSINE = 0.95
WEIGHTS = (0.3, 0.5, 0.7)
RELATIVE = (0.03, 0.05, 0.1)
NEAR_COPY_THRESHOLDS = (0.9, 0.925, 0.95)
_TF: dict[str, np.ndarray] = {}


def sketch_rows(texts: Sequence[str]) -> tuple[np.ndarray, float]:
    """Stored-form sketch rows of ``texts`` and the seconds spent on texts not sketched before."""
    missing = [t for t in dict.fromkeys(texts) if t not in _TF]
    start = time.perf_counter()
    if missing:
        for text, row in zip(missing, tf_rows(missing), strict=True):
            _TF[text] = row
    spent = time.perf_counter() - start if missing else 0.0
    out = np.empty((len(texts), SKETCH_BUCKETS), dtype=np.float16)
    for i, text in enumerate(texts):
        out[i] = _TF[text]
    return out, spent


@dataclass(slots=True)
class FusedSelector:
    """GOT-D through the engine's cost path (see the module docstring).

    Attributes
    ----------
    name : str
    cost : Cost
        ``FUSED`` or ``EMBEDDING``.
    weight : float
        Embedding weight of the fused cost.
    eps : float
        Absolute epsilon (used when ``relative_eps`` is None).
    relative_eps : float or None
        Epsilon as a multiple of the median pool-target cost.
    dup_cosine : float or None
        Rank candidates with embedding cosine above this to a target last.
    metric : LearnedMetric or None
        A metric learned from the target set (:mod:`gotd.server.selection.metric`).
    diagnostics : dict
        Of the last ranking: ``converged``, ``n_iter``, ``marginal_error``, ``eps`` (used),
        ``excluded`` (near-duplicates ranked last), ``sketch_seconds``.
    """

    name: str
    cost: Cost
    weight: float
    eps: float = 0.1
    relative_eps: float | None = None
    dup_cosine: float | None = None
    near_copy_cosine: float | None = None
    metric: LearnedMetric | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        pool_tf, spent_pool = sketch_rows(inp.pool_texts)
        target_tf, spent_target = sketch_rows(inp.target_texts)
        features = pool_features(inp.pool_vectors, pool_tf, self.cost, self.weight, metric=self.metric)
        y = target_features(features, torch.from_numpy(inp.target_vectors), target_tf)
        config = SelectionConfig(mode=Mode.AUTO, eps=self.eps, relative_eps=self.relative_eps, seed=inp.seed)
        potential = solve(features.x, y, config)
        scores = score(features.x, y, potential).numpy()
        eligible = np.ones(len(scores), dtype=bool)
        if self.dup_cosine is not None:
            eligible = ~near_duplicates(inp.pool_vectors, inp.target_vectors, self.dup_cosine)
        if self.near_copy_cosine:  # the server's walk; copies fill the end when too few are distinct
            walk = distinct_top_k(
                scores, k, vectors=inp.pool_vectors, cosine=self.near_copy_cosine, eligible=eligible
            )
            ranked = [r for r, _ in walk.taken] + [r for r, _, _ in walk.skipped][: k - len(walk.taken)]
        else:
            ranked = [r for r, _ in top_k(scores, k, eligible=eligible)]
        if len(ranked) < k:  # a selection has k rows: near-duplicates fill the end, best first
            ranked += [r for r, _ in top_k(scores, k - len(ranked), eligible=~eligible)]
        self.diagnostics = {
            "converged": potential.converged,
            "n_iter": potential.n_iter,
            "marginal_error": potential.marginal_error,
            "eps": potential.eps,
            "excluded": int((~eligible).sum()),
            "sketch_seconds": spent_pool + spent_target,
        }
        return np.asarray(ranked, dtype=np.int64)


def _default_selector(
    name: str, options: MethodOptions, *, nodup: bool, copies: bool = False, near_copy: float | None = None
) -> Selector:
    """The server's defaults (``Settings``), imported late: the settings module reads the environment."""
    from gotd.server.service.config import Settings

    s = Settings.model_construct()  # field defaults only, no environment
    cost = Cost.EMBEDDING if s.cost == "embedding" else Cost.FUSED
    del options
    return FusedSelector(
        name,
        cost,
        s.embedding_weight,
        eps=s.eps,
        relative_eps=s.relative_eps,
        dup_cosine=DUP_COSINE if nodup else None,
        near_copy_cosine=None if copies else (near_copy or s.near_copy_cosine),
    )


def _register() -> None:
    def add(name: str, note: str, make: Any) -> None:
        register_method(name, make, replace=True)
        METHOD_NOTES.setdefault(name, note)

    fused = "fused cost {w:g} · embedding cost + {r:g} · n-gram cost (unit TF-IDF hashed uni+bigram sketch)"
    for w in WEIGHTS:
        text = fused.format(w=w, r=1 - w)
        add(
            f"gotd-fused-w{w}",
            f"GOT-D (auto mode, engine path) on the {text}; ε = the run's eps.",
            lambda n, o, w=w: FusedSelector(n, Cost.FUSED, w, eps=o.eps),
        )
        for c in RELATIVE:
            add(
                f"gotd-fused-w{w}-rel{c}",
                f"GOT-D (auto mode, engine path) on the {text}; ε = {c:g} × median pool-target cost.",
                lambda n, o, w=w, c=c: FusedSelector(n, Cost.FUSED, w, relative_eps=c),
            )
    for c in RELATIVE:
        add(
            f"gotd-emb-rel{c}",
            f"GOT-D (auto mode) on the embedding cost; ε = {c:g} × median pool-target cost.",
            lambda n, o, c=c: FusedSelector(n, Cost.EMBEDDING, 1.0, relative_eps=c),
        )
    add(
        "gotd-fused-w0.5-nodup",
        f"`gotd-fused-w0.5`, candidates with embedding cosine > {DUP_COSINE} to a target ranked last.",
        lambda n, o: FusedSelector(n, Cost.FUSED, 0.5, eps=o.eps, dup_cosine=DUP_COSINE),
    )
    add(
        "gotd-default",
        "GOT-D with the server's default settings (cost auto = fused for texts, "
        f"w = {DEFAULT_EMBEDDING_WEIGHT:g}, the default ε, near-copies of a selected candidate skipped "
        f"at embedding cosine >= {DEFAULT_NEAR_COPY_COSINE:g}), auto mode.",
        lambda n, o: _default_selector(n, o, nodup=False),
    )
    add(
        "gotd-default-copies",
        "`gotd-default` with near-copy skipping off (`near_copy_cosine` 0): the plain top-k.",
        lambda n, o: _default_selector(n, o, nodup=False, copies=True),
    )
    for t in NEAR_COPY_THRESHOLDS:
        add(
            f"gotd-default-nc{t}",
            f"`gotd-default` with near-copies skipped at embedding cosine >= {t:g}.",
            lambda n, o, t=t: _default_selector(n, o, nodup=False, near_copy=t),
        )
    add(
        "gotd-default-nodup",
        f"`gotd-default`, candidates with embedding cosine > {DUP_COSINE} to a target ranked last.",
        lambda n, o: _default_selector(n, o, nodup=True),
    )


_register()
