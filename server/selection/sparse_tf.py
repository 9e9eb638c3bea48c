"""Stored sketch rows in sparse form (:class:`gotd.cache.sketch_rows.SparseRows`, as a pool snapshot keeps
them) as the OT engine's :class:`gotd.server.ot.parts.SparsePart`, and the per-row and per-bucket
reductions the fused cost needs of them (document frequencies, inverse norms, dot products), computed
from the entries without any dense row.
"""

from __future__ import annotations

import numpy as np
import torch

from gotd.cache.sketch_rows import SparseRows, magnitudes
from gotd.server.ot.parts import SparsePart

__all__ = ["document_frequency", "inverse_norms", "row_dots", "sparse_part"]

_BLOCK_ROWS = 1 << 15
_INDEX_TYPES = (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))


def sparse_part(
    tf: SparseRows,
    weight: float = 1.0,
    columns: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> SparsePart:
    """``tf`` as a part of compact rows (its arrays shared, not copied, when already compact) with the
    constant ``weight`` and the per-column and per-row factors."""
    if tf.indices.dtype not in _INDEX_TYPES or tf.values.dtype != np.float16:
        tf = tf.compact()
    return SparsePart(
        torch.from_numpy(np.ascontiguousarray(tf.indptr, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(tf.indices)),
        torch.from_numpy(np.ascontiguousarray(tf.values)),
        tf.width,
        weight,
        None if columns is None else torch.from_numpy(np.ascontiguousarray(columns, dtype=np.float32)),
        None if rows is None else torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)),
    )


def document_frequency(tf: SparseRows) -> np.ndarray:
    """Rows with a non-zero value, per bucket (int64): the entries with a non-zero bit pattern but the
    sign (``tf_rows`` never stores ``-0.0``), counted per bucket."""
    df = np.zeros(tf.width, dtype=np.int64)
    for _start, block in tf.blocks(_BLOCK_ROWS):
        df += np.bincount(block.indices[magnitudes(block.values) != 0], minlength=tf.width)
    return df


def inverse_norms(tf: SparseRows, idf: np.ndarray) -> np.ndarray:
    """``1 / ||tf_i * idf||`` per row, float32 (1 for a zero row), blockwise from the entries."""
    if idf.shape != (tf.width,):
        raise ValueError(f"idf must have shape ({tf.width},), got {idf.shape}")
    part = sparse_part(tf, columns=idf)
    out = np.empty(len(tf), dtype=np.float32)
    for start in range(0, len(tf), _BLOCK_ROWS):
        stop = min(len(tf), start + _BLOCK_ROWS)
        norms = part.sq_norms(start, stop).sqrt_()
        out[start:stop] = torch.where(norms > 0, norms, torch.ones_like(norms)).reciprocal_().numpy()
    return out


def row_dots(tf: SparseRows, along: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``r_i * (tf_i . along)`` per row, float32 (``r`` the per-row factors ``rows``, 1 when None)."""
    if along.shape != (tf.width,):
        raise ValueError(f"along must have shape ({tf.width},), got {along.shape}")
    part = sparse_part(tf, rows=rows)
    y = part.target_side(torch.from_numpy(np.ascontiguousarray(along, dtype=np.float32))[None])
    out = np.empty(len(tf), dtype=np.float32)
    zero = torch.zeros(1, 1)
    for start in range(0, len(tf), _BLOCK_ROWS):
        stop = min(len(tf), start + _BLOCK_ROWS)
        out[start:stop] = part.addmm(zero, start, stop, y, 1.0, None)[:, 0].numpy()
    return out
