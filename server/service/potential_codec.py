"""A solved potential as a dual-cache entry and back (the duals' codec checks the bytes; this the fields)."""

from __future__ import annotations

import time

import numpy as np
import torch

from gotd.cache.duals.codec import PotentialEntry
from gotd.server.selection.modes import Mode, Potential

__all__ = ["potential_entry", "potential_from_entry"]


def potential_entry(
    p: Potential, idf: np.ndarray | None, pool_version: int, target_hash: str, *, f_sum: float, n: int
) -> PotentialEntry:
    """``p`` solved at ``pool_version`` for the target ``target_hash`` (fused cost: with the version's
    IDF weights), with the exactly rounded sum ``f_sum`` of its ``n`` candidate values."""
    return PotentialEntry(
        g=p.g.detach().cpu().numpy().astype(np.float32),
        rows=None if p.rows is None else np.asarray(p.rows, dtype=np.int64),
        idf=None if idf is None else np.asarray(idf, dtype=np.float32),
        meta={
            "mode": p.mode.value,
            "eps": p.eps,
            "n_iter": p.n_iter,
            "marginal_error": p.marginal_error,
            "converged": p.converged,
            "cost": p.cost,
            "pool_version": pool_version,
            "target_hash": target_hash,
            "f_sum": f_sum,
            "n": n,
            "created_at": time.time(),
        },
    )


def potential_from_entry(entry: PotentialEntry) -> Potential:
    """The potential of a cache entry (a missing or mistyped field: KeyError, TypeError or ValueError)."""
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
