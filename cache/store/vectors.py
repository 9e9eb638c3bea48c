"""Unit vectors as the store keeps them: checked, L2-normalised rows and the content hash of a set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import xxhash

from gotd.cache.errors import FailedPrecondition, InvalidArgument
from gotd.cache.records import Record

__all__ = ["UNIT_TOLERANCE", "batch_matrix", "content_hash", "unit_rows"]

UNIT_TOLERANCE: Final = 1e-6


def unit_rows(vectors: np.ndarray, *, what: str, ids: list[str] | None = None) -> np.ndarray:
    """Finite, non-zero rows scaled to unit L2 norm, as a float32 C-contiguous array (the input is
    never modified).

    Rows already of unit norm (within ``UNIT_TOLERANCE``) are kept bit for bit, so normalising is
    idempotent: storing vectors read back from the store changes nothing.

    Raises
    ------
    InvalidArgument
        Naming the first row (its id when ``ids`` is given) that is not finite or is zero.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidArgument(f"{what}: vectors must be a 2-d array, got shape {x.shape}")
    # float64 squares cannot overflow for float32 input: a row's norm is finite iff all its entries are
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        name = f"record {ids[i]!r}" if ids is not None else f"row {i}"
        raise InvalidArgument(f"{what}: {name}: embedding is not finite or is the zero vector")
    scale = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if scale.any():  # x / 1.0 is exact, so unit rows keep their bits
        x = x / np.where(scale, norms, 1.0).astype(np.float32)[:, None]
    return x


def batch_matrix(pool: str, records: Sequence[Record], vectors: np.ndarray | None, dim: int) -> np.ndarray:
    """The (n, dim) embeddings of an upsert batch: ``vectors`` checked, else the records' stacked."""
    if vectors is None:
        out = np.empty((len(records), dim), dtype=np.float32)
        for i, r in enumerate(records):
            if r.embedding is None:
                raise InvalidArgument(f"pool {pool!r}: record {r.id!r} has no embedding")
            if r.embedding.shape != (dim,):
                raise FailedPrecondition(
                    f"pool {pool!r}: record {r.id!r} has an embedding of dimension "
                    f"{r.embedding.shape[0]}, the pool's model has {dim}"
                )
            out[i] = r.embedding
        return out
    matrix = np.asarray(vectors)
    if matrix.ndim != 2 or matrix.shape[0] != len(records):
        raise InvalidArgument(
            f"pool {pool!r}: vectors must have shape ({len(records)}, {dim}), got {matrix.shape}"
        )
    if matrix.shape[1] != dim:
        raise FailedPrecondition(f"pool {pool!r}: vectors have dimension {matrix.shape[1]}, expected {dim}")
    return matrix


def content_hash(model: str, vectors: np.ndarray) -> str:
    """xxh3_128 of the model id and the little-endian float32 vectors (names a target set)."""
    h = xxhash.xxh3_128()
    h.update(model.encode())
    h.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return h.hexdigest()
