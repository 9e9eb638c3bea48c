"""Selectors compared by the evaluation, behind one small interface and a registry.

A selector ranks the pool of a :class:`~gotd.lab.evaluation.tasks.SelectionInput` (texts and
embeddings, never labels) and returns the best ``k`` pool rows in rank order, so the selection at any
smaller size is a prefix. New selectors (issue 10: fused costs, other encoders, other epsilons) plug in
with :func:`register_method`.

Built in:

- ``gotd-global``, ``gotd-exact``, ``gotd-paper``: :func:`gotd.server.selection.modes.rank` in that mode
  (paper mode's domains are k-means clusters of the pool embeddings, never labels);
- ``gotd-global-1k``: ``global`` with a 1,000-row summary, the path of pools larger than the summary
  (with the default 4,096-row summary a 3,000-row pool is its own summary and ``global`` is ``exact``);
- ``dsir``: DSIR (Xie et al., 2023) through the ``data-selection`` package, hashed uni+bigram features,
  importance *resampling* (Gumbel top-k, the package's default ``resample``), seeded;
- ``dsir-topk``: the same importance weights, deterministic top-k (``resample(top_k=True)``); not in
  the default run: log weights are sums over a text's n-grams (hundreds in magnitude), so the Gumbel
  noise of resampling (scale 1) almost never changes the top k and both rank alike;
- ``centroid``: cosine to the normalised mean of the target embeddings;
- ``random``: a seeded uniform permutation.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gotd.lab.evaluation.tasks import SelectionInput

__all__ = [
    "DEFAULT_METHODS",
    "MethodOptions",
    "Selector",
    "available_methods",
    "dsir_log_weights",
    "make_method",
    "order_by_score",
    "register_method",
]


class Selector(Protocol):
    """A pool ranker: ``rank(inp, k)`` returns ``k`` distinct pool rows, best first."""

    name: str

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        """The ``k`` best pool rows of ``inp``, best first (int64, shape ``(k,)``)."""
        ...


@dataclass(frozen=True, slots=True)
class MethodOptions:
    """Settings shared by every selector of a run.

    Attributes
    ----------
    eps : float
        Entropic regularisation of the OT selectors.
    workdir : Path or None
        Scratch directory for selectors that need files (DSIR); None for a fresh temporary one.
    """

    eps: float = 0.1
    workdir: Path | None = None


MethodFactory = Callable[[str, MethodOptions], Selector]
_REGISTRY: dict[str, MethodFactory] = {}

#: Methods of a default run, in report order.
DEFAULT_METHODS: tuple[str, ...] = (
    "gotd-global",
    "gotd-global-1k",
    "gotd-exact",
    "gotd-paper",
    "dsir",
    "centroid",
    "random",
)


def register_method(name: str, factory: MethodFactory, *, replace: bool = False) -> None:
    """Make ``factory(name, options)`` available as method ``name``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"method {name!r} is already registered")
    _REGISTRY[name] = factory


def available_methods() -> list[str]:
    """Registered method names (built-ins first)."""
    return list(_REGISTRY)


def make_method(name: str, options: MethodOptions) -> Selector:
    """A selector by name; ``ValueError`` naming the choices for an unknown one."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(_REGISTRY)}") from None
    return factory(name, options)


def order_by_score(scores: np.ndarray, k: int, *, descending: bool = True) -> np.ndarray:
    """The ``k`` best rows by ``scores``, ties broken by row (deterministic)."""
    s = np.asarray(scores, dtype=np.float64)
    keys = -s if descending else s
    return np.lexsort((np.arange(s.size), keys))[:k].astype(np.int64)


# -- built-in selectors -------------------------------------------------------------------------


@dataclass(slots=True)
class GotdSelector:
    """GOT-D in one mode of :mod:`gotd.server.selection.modes` (``global``, ``exact``, ``paper``).

    The same steps as :func:`gotd.server.selection.modes.rank` (``solve``, then ``score``, then ``top_k``),
    taken one by one so the solve's convergence is reported in :attr:`diagnostics`. ``paper`` keeps
    the ``paper_domains`` (2, as in the paper) k-means clusters of the pool closest to the targets in
    OT cost and ranks only their rows; when those hold fewer than ``k`` rows, the selector solves
    again with one more domain until they do (a selection must have ``k`` rows).

    Attributes
    ----------
    diagnostics : dict
        Of the last ranking: ``converged``, ``n_iter``, ``marginal_error`` and (``paper``) ``domains``.
    """

    name: str
    mode: str
    eps: float
    summary_size: int | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import gotd.server.selection.modes  # noqa: F401  (import cost is not selection time)

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        from gotd.server.selection.modes import Mode, SelectionConfig, score, solve, top_k

        x = torch.from_numpy(inp.pool_vectors)
        y = torch.from_numpy(inp.target_vectors)
        config = SelectionConfig(mode=Mode(self.mode), eps=self.eps, seed=inp.seed)
        if self.summary_size is not None:
            config = replace(config, summary_size=self.summary_size)
        potential = solve(x, y, config)
        while (
            potential.rows is not None
            and potential.rows.size < k
            and config.paper_domains < config.paper_clusters
        ):
            config = replace(config, paper_domains=config.paper_domains + 1)
            potential = solve(x, y, config)
        rows = potential.rows
        if rows is None:
            ranked = [r for r, _ in top_k(score(x, y, potential).numpy(), k)]
        else:
            sub = top_k(score(x[torch.from_numpy(rows)], y, potential).numpy(), k)
            ranked = [int(rows[i]) for i, _ in sub]
        self.diagnostics = {
            "converged": potential.converged,
            "n_iter": potential.n_iter,
            "marginal_error": potential.marginal_error,
        }
        if rows is not None:
            self.diagnostics["domains"] = config.paper_domains
        return np.asarray(ranked, dtype=np.int64)


@dataclass(slots=True)
class CentroidSelector:
    """Cosine similarity to the normalised mean of the target embeddings."""

    name: str

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        c = inp.target_vectors.astype(np.float64).mean(axis=0)
        c /= max(float(np.linalg.norm(c)), 1e-12)
        return order_by_score(inp.pool_vectors.astype(np.float64) @ c, k)


@dataclass(slots=True)
class RandomSelector:
    """A uniform random permutation from the input's seed."""

    name: str

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        rng = np.random.default_rng(inp.seed)
        return rng.permutation(len(inp.pool_texts))[:k].astype(np.int64)


@dataclass(slots=True)
class DsirSelector:
    """DSIR with hashed uni+bigram features from ``data-selection`` (optional extra ``eval``).

    ``min_example_length=1`` (the package default of 100 tokens silently drops most short texts) and
    ``tokenizer='wordpunct'`` (a regex tokenizer: no nltk data download). With ``resample`` the
    ranking is the package's importance resampling (log weight plus Gumbel noise, top-k, seeded);
    without it, deterministic top-k by log importance weight.
    """

    name: str
    resample: bool
    workdir: Path | None = None
    ngrams: int = 2
    num_buckets: int = 10000

    def __post_init__(self) -> None:
        _import_dsir()  # fail at construction, and keep import time out of selection time

    def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
        weights, eligible = dsir_log_weights(
            inp.pool_texts,
            inp.target_texts,
            workdir=self.workdir,
            ngrams=self.ngrams,
            num_buckets=self.num_buckets,
        )
        keys = weights.astype(np.float64)
        if self.resample:
            keys = keys + np.random.default_rng(inp.seed).gumbel(size=keys.size)
        keys[~eligible] = -np.inf
        return order_by_score(keys, k)


def dsir_log_weights(
    pool_texts: Sequence[str],
    target_texts: Sequence[str],
    *,
    workdir: Path | None = None,
    ngrams: int = 2,
    num_buckets: int = 10000,
) -> tuple[np.ndarray, np.ndarray]:
    """DSIR log importance weights of the pool, computed by the ``data-selection`` package.

    Writes both sets as JSON lines, fits the hashed n-gram models on every token
    (``num_tokens_to_fit='all'``), computes the weights in one process, and reads them back.

    Returns
    -------
    weights : numpy.ndarray, shape (n,)
        Log importance weight of each pool text.
    eligible : numpy.ndarray of bool, shape (n,)
        The package's length filter (``min_example_length=1``): False only for texts without tokens.
    """
    dsir_class = _import_dsir()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="gotd-dsir-") as tmp:
        root = Path(tmp)
        raw, target = root / "pool.jsonl", root / "target.jsonl"
        for path, texts in ((raw, pool_texts), (target, target_texts)):
            with path.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        dsir = dsir_class(
            raw_datasets=[str(raw)],
            target_datasets=[str(target)],
            cache_dir=str(root / "cache"),
            num_proc=1,
            ngrams=ngrams,
            num_buckets=num_buckets,
            tokenizer="wordpunct",
            min_example_length=1,
        )
        with contextlib.redirect_stderr(io.StringIO()):  # the package's tqdm bars
            dsir.fit_importance_estimator(num_tokens_to_fit="all")
            dsir.compute_importance_weights()
        weights = np.load(root / "cache" / "log_importance_weights" / "0.npy", allow_pickle=False)
        lengths = np.load(root / "cache" / "perexample_metadata" / "0.npy", allow_pickle=False)
    if weights.shape != (len(pool_texts),):
        raise RuntimeError(f"DSIR returned {weights.shape[0]} weights for {len(pool_texts)} texts")
    return weights.astype(np.float64), np.asarray(dsir.perexample_metadata_filter(lengths), dtype=bool)


def _import_dsir() -> Any:
    try:
        from data_selection import HashedNgramDSIR
    except ImportError:
        raise ImportError("DSIR needs the eval extra: pip install 'gotd[eval]' (data-selection)") from None
    return HashedNgramDSIR


register_method("gotd-global", lambda n, o: GotdSelector(n, "global", o.eps))
register_method("gotd-global-1k", lambda n, o: GotdSelector(n, "global", o.eps, summary_size=1000))
register_method("gotd-exact", lambda n, o: GotdSelector(n, "exact", o.eps))
register_method("gotd-paper", lambda n, o: GotdSelector(n, "paper", o.eps))
register_method("dsir", lambda n, o: DsirSelector(n, resample=True, workdir=o.workdir))
register_method("dsir-topk", lambda n, o: DsirSelector(n, resample=False, workdir=o.workdir))
register_method("centroid", lambda n, o: CentroidSelector(n))
register_method("random", lambda n, o: RandomSelector(n))
