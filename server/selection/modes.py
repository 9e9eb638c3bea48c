"""Selection engine math: modes, target potentials, scoring by the one ranking rule, streaming top-k.

GOT-D (Kang et al., 2024) ranks candidates by the calibrated gradient of the entropic OT distance
between the pool and the target set. Every path here ends in the same rule,

.. math::

    \\mathrm{score} = \\mathrm{calibrated\\_gradient}\\big(c\\text{-}\\mathrm{transform}(x, y, g)\\big),

with ``g`` the float32 target potential, whatever produced ``g`` (a full solve, a solve on a
summary of the pool, a dual-cache hit or a recompute), ties broken by candidate id. Modes:

- ``exact``: Sinkhorn between the whole pool and the targets.
- ``global``: Sinkhorn between a summary of the pool and the targets, then one c-transform pass
  scores every candidate. The summary is the ``summary_size`` rows with the smallest id hashes,
  weighted so that each of ``summary_cells`` k-means cells carries its exact share of the pool
  (post-stratification), or caller-supplied weighted centroids.
- ``paper``: OT distance from the targets to each domain, keep the closest ``paper_domains``, exact
  solve on them; only their rows are ranked.
- ``auto``: ``exact`` up to ``exact_max_pool`` candidates, ``global`` above.

Imports torch and numpy only (no storage, no wire, no FAISS).

References
----------
.. [1] M. Cuturi, "Sinkhorn Distances", NeurIPS 2013.
.. [2] F. Kang et al., "Get more for less: Principled Data Selection for Warming Up Fine-Tuning in
   LLMs", ICLR 2024.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from gotd.server.ot.geometry import median_cost, project_to_targets, worth_projecting
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.rows import Rows, rows_of, take
from gotd.server.ot.sinkhorn import SinkhornResult, c_transform, sinkhorn
from gotd.server.selection.config import (
    RELATIVE_EPS_ROWS,
    Mode,
    Potential,
    SelectionConfig,
    resolve_mode,
    summary_rows,
)
from gotd.server.selection.kmeans import id_keys, key_order, kmeans_labels, stratified_weights
from gotd.server.selection.topk import top_k

LOG = logging.getLogger(__name__)

__all__ = [
    "Mode",
    "Potential",
    "SelectionConfig",
    "domain_labels",
    "id_keys",
    "rank",
    "relative_eps",
    "resolve_mode",
    "score",
    "solve",
    "summary_rows",
    "top_k",
]


def solve(
    x: Rows,
    y: torch.Tensor,
    config: SelectionConfig,
    *,
    keys: np.ndarray | None = None,
    domains: np.ndarray | None = None,
    summary: tuple[torch.Tensor, torch.Tensor] | None = None,
    init_g: torch.Tensor | None = None,
    callback: Callable[[int, float], None] | None = None,
    on_block: Callable[[], None] | None = None,
) -> Potential:
    """The target potential ``g`` of a pool for the configured mode.

    Solves run on rows in (key, row) order, so the potential does not depend on the row order.

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
        Pool embeddings (float32; float64 allowed).
    y : torch.Tensor, shape (m, d)
        Target embeddings, same dtype and device.
    config : SelectionConfig
        Mode (``AUTO`` is resolved with ``n``) and solver settings.
    keys : numpy.ndarray, shape (n,), uint64, optional
        64-bit hashes of the candidate ids; None: the row index.
    domains : numpy.ndarray, shape (n,), optional
        ``paper``: domain label per row; None: k-means clusters (``config.paper_clusters``).
    summary : (torch.Tensor, torch.Tensor), shapes (s, d) and (s,), optional
        ``global``: points and positive weights (e.g. FAISS centroids and cluster sizes) replacing
        the hash subsample.
    init_g : torch.Tensor, shape (m,), optional
        Warm start of the (final) solve.
    callback : callable, optional
        ``callback(iteration, marginal_error)`` at every convergence check of every solve; an
        exception it raises propagates.
    on_block : callable, optional
        ``on_block()`` before every block of every Sinkhorn pass (a cancellation check); an exception
        it raises propagates.

    Returns
    -------
    Potential
    """
    n = x.shape[0]
    if x.ndim != 2 or n < 1:
        raise ValueError(f"x must be a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    keys = np.arange(n, dtype=np.uint64) if keys is None else np.asarray(keys, dtype=np.uint64)
    if keys.shape != (n,):
        raise ValueError(f"keys must have shape ({n},), got {keys.shape}")
    mode = resolve_mode(config.mode, n, config)
    if config.relative_eps is not None:
        config = replace(config, eps=relative_eps(x, y, keys, config.relative_eps), relative_eps=None)

    def run(rows: np.ndarray | None, warm: torch.Tensor | None) -> SinkhornResult:
        pts = x if rows is None else take(x, torch.from_numpy(rows).to(x.device))
        return _sinkhorn(pts, y, config, warm, None, callback, on_block)

    rows_out: np.ndarray | None = None
    if mode is Mode.GLOBAL and summary is not None:
        points, weights = summary
        pts = points.to(device=x.device, dtype=x.dtype)
        res = _sinkhorn(
            pts, y, config, init_g, weights.to(device=x.device, dtype=x.dtype), callback, on_block
        )
    elif mode is Mode.GLOBAL:
        picked = summary_rows(keys, config.summary_size)
        picked = picked[key_order(keys[picked])]
        weights_a = None
        if config.summary_cells > 0 and len(picked) < n:
            w = stratified_weights(x, picked, keys, cells=config.summary_cells)
            weights_a = torch.from_numpy(w).to(device=x.device, dtype=x.dtype)
        pts = rows_of(x, torch.from_numpy(picked).to(x.device))  # the summary: small, dense
        res = _sinkhorn(pts, y, config, init_g, weights_a, callback, on_block)
    elif mode is Mode.PAPER:
        rows_out = _paper_rows(x, config, keys, domains, run)
        res = run(rows_out[key_order(keys[rows_out])], init_g)
    else:
        order = key_order(keys)
        res = run(None if bool((order == np.arange(n)).all()) else order, init_g)
    LOG.info(
        "solve mode=%s n=%d m=%d eps=%g: %d passes, marginal error %.3g, converged=%s",
        mode.value,
        n,
        y.shape[0],
        config.eps,
        res.n_iter,
        res.marginal_error,
        res.converged,
    )
    return Potential(
        g=res.g.detach().to(device="cpu", dtype=torch.float32),
        mode=mode,
        eps=float(config.eps),
        n_iter=res.n_iter,
        marginal_error=res.marginal_error,
        converged=res.converged,
        cost=res.cost,
        rows=rows_out,
    )


def relative_eps(x: Rows, y: torch.Tensor, keys: np.ndarray, c: float) -> float:
    """``c`` times the median cost between the candidates of smallest id hash and spaced targets.

    Both samples have at most :data:`RELATIVE_EPS_ROWS` rows; the result does not depend on row order.
    """
    rows = summary_rows(np.asarray(keys, dtype=np.uint64), RELATIVE_EPS_ROWS)
    step = max(1, -(-y.shape[0] // RELATIVE_EPS_ROWS))
    return c * median_cost(rows_of(x, torch.from_numpy(rows).to(x.device)), y[::step])


def _sinkhorn(
    x: Rows,
    y: torch.Tensor,
    config: SelectionConfig,
    init_g: torch.Tensor | None,
    a: torch.Tensor | None,
    callback: Callable[[int, float], None] | None,
    on_block: Callable[[], None] | None = None,
) -> SinkhornResult:
    if config.project and worth_projecting(y.shape[0], x.shape[1]):
        x, y = project_to_targets(x, y)
    return sinkhorn(
        x,
        y,
        eps=config.eps,
        a=a,
        tol=config.tol,
        max_iter=config.max_iter,
        init_g=init_g,
        block_size=config.block_size,
        eps_scaling=config.eps_scaling,
        callback=callback,
        on_block=on_block,
    )


def _paper_rows(
    x: Rows,
    config: SelectionConfig,
    keys: np.ndarray,
    domains: np.ndarray | None,
    run: Callable[[np.ndarray | None, torch.Tensor | None], SinkhornResult],
) -> np.ndarray:
    """Sorted rows of the ``paper_domains`` domains closest to the targets in OT cost (ties by label)."""
    n = x.shape[0]
    if domains is None:
        labels = kmeans_labels(x, config.paper_clusters, keys=keys, seed=config.seed)
    else:
        domains = np.asarray(domains)
        if domains.shape != (n,):
            raise ValueError(f"domains must have shape ({n},), got {domains.shape}")
        labels = np.unique(domains, return_inverse=True)[1].reshape(n)
    uniq = np.unique(labels)
    if len(uniq) <= config.paper_domains:
        return np.arange(n, dtype=np.int64)
    costs = []
    for label in uniq.tolist():
        rows = np.flatnonzero(labels == label)
        costs.append((run(rows[key_order(keys[rows])], None).cost, label))
    kept = {label for _, label in sorted(costs)[: config.paper_domains]}
    LOG.info("paper mode: domain OT costs %s, kept %s", sorted(costs), sorted(kept))
    return np.flatnonzero(np.isin(labels, list(kept))).astype(np.int64)


def score(
    x: Rows,
    y: torch.Tensor,
    potential_or_g: Potential | torch.Tensor,
    *,
    eps: float | None = None,
    block_size: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The one ranking rule: ``calibrated_gradient(c_transform(x, y, g))`` with ``g`` cast to float32.

    .. math::

        f_i = -\\varepsilon \\log \\sum_j b_j e^{(g_j - C_{ij})/\\varepsilon}, \\qquad
        \\mathrm{score}_i = f_i - \\frac{1}{n-1}\\sum_{k \\ne i} f_k

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
        Candidates to score (``paper``: pass the kept rows, ``x[potential.rows]``).
    y : torch.Tensor, shape (m, d)
        Targets.
    potential_or_g : Potential or torch.Tensor of shape (m,)
        The target potential.
    eps : float, optional
        Regularisation; required with a bare ``g``, must match ``Potential.eps`` when given.
    block_size : int, optional
        Rows per block.
    callback : callable, optional
        ``callback(rows_done, n)`` after each block; an exception it raises propagates.

    Returns
    -------
    torch.Tensor, shape (n,), float32
        Lower is better.

    Raises
    ------
    ValueError
        Bad shapes or eps, or non-finite scores (NaN or infinite embeddings).
    """
    if isinstance(potential_or_g, Potential):
        if eps is not None and eps != potential_or_g.eps:
            raise ValueError(f"eps {eps!r} differs from the potential's eps {potential_or_g.eps!r}")
        eps, g = potential_or_g.eps, potential_or_g.g
    elif eps is None:
        raise ValueError("eps is required when scoring with a bare potential g")
    else:
        g = potential_or_g
    g32 = g.detach().to(torch.float32)
    f = c_transform(x, y, g32, eps=eps, block_size=block_size, callback=callback)
    scores = calibrated_gradient(f).to(torch.float32)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("non-finite scores: the embeddings contain NaN or infinite values")
    return scores


def rank(
    x: Rows,
    y: torch.Tensor,
    *,
    mode: Mode | str,
    eps: float,
    k: int | None = None,
    seed: int = 0,
    ids: Sequence[str] | None = None,
    domains: np.ndarray | None = None,
    batch_size: int = 1000,
    config: SelectionConfig | None = None,
    init_g: torch.Tensor | None = None,
    keys: np.ndarray | None = None,
) -> Iterator[list[tuple[int, float]]]:
    """Rank pool rows toward the targets: batches of ``(row, score)``, most negative score first.

    Solves for the target potential in ``mode`` (:func:`solve`), scores by :func:`score` and orders
    by :func:`top_k` (ties by id). The work is done before the first batch is returned, so argument
    errors raise at the call. ``paper`` ranks only the kept domains' rows, scored among themselves.

    Parameters
    ----------
    x, y : torch.Tensor, shapes (n, d) and (m, d)
        Pool and target embeddings.
    mode : Mode or str
        ``auto``, ``exact``, ``global`` or ``paper``.
    eps : float
        Entropic regularisation.
    k : int, optional
        Rows to return; None: all (eligible) rows.
    seed : int
        k-means seed of ``paper`` mode.
    ids : sequence of str, length n, optional
        Candidate ids: break ties and (hashed by :func:`id_keys`) choose the ``global`` subsample.
    domains : numpy.ndarray, shape (n,), optional
        ``paper`` domain labels.
    batch_size : int
        Pairs per yielded batch.
    config : SelectionConfig, optional
        Other settings (its mode, eps and seed are replaced by the arguments).
    init_g : torch.Tensor, shape (m,), optional
        Warm start.
    keys : numpy.ndarray, shape (n,), uint64, optional
        Precomputed id hashes (e.g. the store's); default ``id_keys(ids)``, else the row index.

    Returns
    -------
    iterator of list of (int, float)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    cfg = replace(config or SelectionConfig(), mode=Mode(mode), eps=eps, seed=seed)
    if keys is None and ids is not None:
        keys = id_keys(ids)
    potential = solve(x, y, cfg, keys=keys, domains=domains, init_g=init_g)
    rows = potential.rows
    if rows is None:
        ranked = top_k(score(x, y, potential).numpy(), k, ids=ids)
    else:
        sub_ids = None if ids is None else [ids[i] for i in rows.tolist()]
        sub = top_k(score(take(x, torch.from_numpy(rows).to(x.device)), y, potential).numpy(), k, ids=sub_ids)
        ranked = [(int(rows[i]), s) for i, s in sub]
    return (ranked[s : s + batch_size] for s in range(0, len(ranked), batch_size))


def domain_labels(domains: Sequence[str] | np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Integer domain labels of ``rows`` (for the paper mode) when every row has a domain; else None
    (the paper mode then clusters)."""
    picked = np.asarray(domains, dtype=object)[rows]
    if len(picked) == 0 or any(not d for d in picked):
        return None
    _, labels = np.unique(picked.astype(str), return_inverse=True)
    return labels.astype(np.int64)
