"""Deterministic, row-order-invariant helpers of the selection modes: id keys and k-means domains.

Everything here walks the candidates in the order of their 64-bit keys (hashes of candidate ids),
so the result does not depend on the order of the rows the caller passes in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from gotd.server.ot.rows import Part, Rows, addmm_rows, block, rows_of, sq_norms, target_parts

__all__ = ["id_keys", "key_order", "key_uniforms", "kmeans_labels", "splitmix64", "stratified_weights"]

_MASK = (1 << 64) - 1
_COMPACT_BLOCK_BYTES = 32 << 20


def id_keys(ids: Sequence[str]) -> np.ndarray:
    """64-bit keys of candidate ids: the first 8 bytes (little endian) of BLAKE2b of the UTF-8 id.

    Parameters
    ----------
    ids : sequence of str, length n

    Returns
    -------
    numpy.ndarray, shape (n,), uint64
    """
    digest = b"".join(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest() for i in ids)
    return np.frombuffer(digest, dtype="<u8").astype(np.uint64)


def key_order(keys: np.ndarray) -> np.ndarray:
    """Rows sorted by (key, row): a canonical order that ignores how the rows were shuffled."""
    return np.argsort(keys, kind="stable").astype(np.int64)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of uint64 values, elementwise: a cheap, well-mixed 64-bit hash."""
    z = z.astype(np.uint64) + np.array([0x9E3779B97F4A7C15], dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.array([0xBF58476D1CE4E5B9], dtype=np.uint64)
    z = (z ^ (z >> np.uint64(27))) * np.array([0x94D049BB133111EB], dtype=np.uint64)
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def key_uniforms(keys: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Uniforms in (0, 1), one per key, from a splitmix64 of (key, seed, stream): no row-order effect.

    Parameters
    ----------
    keys : numpy.ndarray, shape (n,), uint64
    seed, stream : int
        Mixed into the hash; different streams give independent draws.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
    """
    salt = np.array([(seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03) & _MASK], dtype=np.uint64)
    z = splitmix64(keys.astype(np.uint64) ^ salt)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def kmeans_labels(
    x: Rows,
    k: int,
    *,
    keys: np.ndarray,
    seed: int = 0,
    max_iter: int = 25,
    block_size: int = 65536,
) -> np.ndarray:
    """Lloyd k-means with k-means++ seeding, deterministic and invariant to the order of the rows.

    Seeding draws each new centre with probability :math:`\\propto D(x_i)^2` by an exponential race
    :math:`\\arg\\max_i D(x_i)^2 / E_i` whose :math:`E_i` come from the candidates' keys; centroid sums
    run in key order in float64. Assignment minimises :math:`\\lVert c\\rVert^2 - 2\\,x\\cdot c`.

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
        Points (any float dtype, CPU or CUDA).
    k : int
        Clusters (clipped to n).
    keys : numpy.ndarray, shape (n,), uint64
        Candidate keys.
    seed : int
        Seeds the k-means++ draws.
    max_iter : int
        Lloyd iterations at most (stops earlier when no label changes).
    block_size : int
        Rows per block (bounds the temporary memory).

    Returns
    -------
    numpy.ndarray, shape (n,), int64
        Labels in ``[0, k)``, numbered by first appearance in key order.
    """
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    if keys.shape != (n,):
        raise ValueError(f"keys must have shape ({n},), got {keys.shape}")
    labels, _ = _kmeans(x, min(k, n), keys, seed, max_iter, block_size)
    order = key_order(keys)
    in_key_order = labels[order]
    _, first = np.unique(in_key_order, return_index=True)
    renumber = np.zeros(min(k, n), dtype=np.int64)
    renumber[in_key_order[np.sort(first)]] = np.arange(len(first))
    out: np.ndarray = renumber[labels]
    return out


def stratified_weights(
    x: Rows, rows: np.ndarray, keys: np.ndarray, *, cells: int, block_size: int = 65536
) -> np.ndarray:
    """Post-stratification weights of a subsample: each cell's pool count over its subsample count.

    The cells are the Voronoi cells of the ``cells`` subsample points with the smallest keys (a
    random, row-order-free choice). One blockwise GEMM (compact rows: one per part, into one
    accumulator, never a dense block of the pool) assigns every pool row to its nearest centre;
    subsample row ``i`` in cell ``c`` gets weight :math:`N_c / s_c`, so the weighted subsample
    carries each cell's exact share of the pool. That removes the random cell masses of a uniform
    subsample, its main error as a summary (measured: as good as k-means cells, at no iteration).

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
        The pool.
    rows : numpy.ndarray, shape (s,), int64
        Subsample rows.
    keys : numpy.ndarray, shape (n,), uint64
        Candidate keys.
    cells : int
        Number of cells (clipped to s).
    block_size : int
        Rows per assignment block.

    Returns
    -------
    numpy.ndarray, shape (s,), float64
        Positive weights (unnormalised).
    """
    if cells < 1:
        raise ValueError(f"cells must be >= 1, got {cells!r}")
    block_size = _block_rows(x, block_size, multiplied=True)
    centre_rows = rows[key_order(keys[rows])[:cells]]
    n = x.shape[0]
    with torch.no_grad():
        centres = rows_of(x, torch.from_numpy(centre_rows).to(x.device))
        cn = torch.linalg.vector_norm(centres, dim=1).square_()
        ys = target_parts(x, centres)  # compact rows: one GEMM per part, no dense block of the pool
        pool = torch.cat(
            [
                addmm_rows(cn, x, s, min(n, s + block_size), ys, alpha=-2.0).argmin(1)
                for s in range(0, n, block_size)
            ]
        )
    labels = pool.cpu().numpy()
    pool_counts = np.bincount(labels, minlength=len(centre_rows)).astype(np.float64)
    sample_labels = labels[rows]
    sample_counts = np.bincount(sample_labels, minlength=len(centre_rows)).astype(np.float64)
    out: np.ndarray = pool_counts[sample_labels] / sample_counts[sample_labels]
    return out


def _block_rows(x: Rows, block_size: int, *, multiplied: bool = False) -> int:
    """``block_size``, or fewer rows for compact rows: a block read from them is a new float32 copy
    (float64 for the centroid sums), kept to about 32 MB. ``multiplied``: the blocks are only
    multiplied (:func:`addmm_rows`), which copies the dense parts' columns alone (a sparse part's
    entries are summed where they are): fewer, larger blocks, whose per-block work on a sparse part's
    entries costs far less per entry."""
    if isinstance(x, torch.Tensor):
        return block_size
    width = sum(p.width for p in x.parts if isinstance(p, Part)) if multiplied else x.shape[1]
    return max(1, min(block_size, _COMPACT_BLOCK_BYTES // (8 * max(1, width))))


def _row(x: Rows, i: int) -> torch.Tensor:
    """Row ``i`` of ``x`` in float64."""
    return block(x, i, i + 1)[0].double()


def _assign_to(xb: torch.Tensor, centers: torch.Tensor, cn: torch.Tensor) -> torch.Tensor:
    return torch.addmm(cn, xb, centers.T, alpha=-2.0).argmin(1)


def _kmeans(
    x: Rows, k: int, keys: np.ndarray, seed: int, max_iter: int, block_size: int
) -> tuple[np.ndarray, torch.Tensor]:
    """Labels (row order) and float64 centres of a deterministic, row-order-invariant k-means."""
    n = x.shape[0]
    block_size = _block_rows(x, block_size)
    order = torch.from_numpy(key_order(keys)).to(x.device)
    spans = [(s, min(n, s + block_size)) for s in range(0, n, block_size)]
    with torch.no_grad():
        xn = sq_norms(x).double()
        centers = _seed(x, xn, spans, k, keys, seed)
        labels = torch.full((n,), -1, dtype=torch.int64, device=x.device)
        for _ in range(max_iter):
            c = centers.to(x.dtype)
            cn = (c * c).sum(1)
            new = torch.cat([_assign_to(block(x, s, e), c, cn) for s, e in spans])
            if bool((new == labels).all()):
                break
            labels = new
            sums = torch.zeros_like(centers)
            counts = torch.zeros(k, dtype=torch.float64, device=x.device)
            for s, e in spans:  # key order: the float64 sums do not depend on the row order
                rows = order[s:e]
                onehot = torch.nn.functional.one_hot(labels[rows], k).to(torch.float64)
                sums += onehot.T @ rows_of(x, rows).double()
                counts += onehot.sum(0)
            filled = counts > 0
            centers[filled] = sums[filled] / counts[filled, None]
        return labels.cpu().numpy(), centers


def _seed(
    x: Rows, xn: torch.Tensor, spans: list[tuple[int, int]], k: int, keys: np.ndarray, seed: int
) -> torch.Tensor:
    """k-means++ centres (float64) by exponential races over key-derived uniforms."""

    def race(stream: int) -> torch.Tensor:
        return torch.from_numpy(-np.log(key_uniforms(keys, seed, stream))).to(xn.device)

    def dist2(c: torch.Tensor) -> torch.Tensor:
        cross = torch.cat([block(x, s, e) @ c.to(x.dtype) for s, e in spans]).double()
        return (xn - 2.0 * cross + c @ c).clamp_min_(0.0)

    centers = [_row(x, int(torch.argmin(race(0))))]
    d2 = dist2(centers[0])
    for stream in range(1, k):
        e = race(stream)
        pick = int(torch.argmax(d2 / e)) if bool((d2 > 0).any()) else int(torch.argmin(e))
        centers.append(_row(x, pick))
        d2 = torch.minimum(d2, dist2(centers[-1]))
    return torch.stack(centers)
