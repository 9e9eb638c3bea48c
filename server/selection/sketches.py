"""Hashed n-gram sketches and fused (embedding + n-gram) feature vectors for OT selection (issue 10).

A text's *sketch* is its uni+bigram bag hashed into ``buckets`` signed buckets (feature hashing,
Weinberger et al., 2009, with ``xxh3_64``: the bucket from the low bits, the sign from the top bit),
sublinear term frequency ``sign(v) log(1 + |v|)``, an inverse-document-frequency weight per bucket,
and an L2 normalisation. The term frequencies of a text depend on nothing else, so they are computed
once per text and stored (:func:`tf_rows`, float16, :data:`SKETCH_BUCKETS` wide); the IDF weights
come from a pool's document frequencies (:func:`document_frequency`, :func:`idf_from_df`) and, with
the normalisation, are applied when a pool's rows are built (:func:`unit_sketches`,
:func:`fused_matrix`).

:func:`fuse` concatenates ``sqrt(w)`` times a unit embedding with ``sqrt(1 - w)`` times a unit sketch.
For two fused vectors ``x = (sqrt(w) e, sqrt(1-w) s)`` and ``x' = (sqrt(w) e', sqrt(1-w) s')``,

.. math::

    \\lVert x - x'\\rVert^2 = w \\lVert e - e'\\rVert^2 + (1 - w) \\lVert s - s'\\rVert^2,

the weighted sum of the embedding cost and the n-gram cost, so the squared-Euclidean OT solver of
:mod:`gotd.server.ot.sinkhorn` works on the fused cost unchanged and no n x m cost matrix is ever stored.
Fused vectors are unit vectors again (``w + (1 - w) = 1``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
import xxhash

from gotd.cache.sketch_rows import SparseRows, indptr_of
from gotd.server.selection import sparse_tf
from gotd.server.selection.ngram_hash import batch_ngram_hashes

__all__ = [
    "SKETCH_BUCKETS",
    "document_frequency",
    "fuse",
    "fused_matrix",
    "hashed_counts",
    "idf_from_df",
    "inverse_norms",
    "ngrams",
    "tf_rows",
    "tf_sparse",
    "unit_sketches",
]

#: Width of the sketches the store keeps per candidate and target (float16 term frequencies).
SKETCH_BUCKETS = 1 << 10
_BLOCK_ROWS = 1 << 15
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_SIGN_BIT = 1 << 63
_TF_BLOCK = 1 << 8  # texts per pass of tf_rows (small: the temporaries of a pass stay in the cache)

SparseCounts = tuple[np.ndarray, np.ndarray]
"""A text's hashed counts: bucket indices (int64, sorted, unique) and signed sums (float32)."""


def ngrams(text: str, *, order: int = 2) -> list[str]:
    """Lower-cased word-punct uni- to ``order``-grams of ``text`` (n-gram tokens joined by a space).

    Parameters
    ----------
    text : str
        The text.
    order : int
        Longest n-gram (1 = unigrams only, 2 = uni+bigrams).

    Returns
    -------
    list of str
        Every n-gram occurrence, unigrams first.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    tokens = _TOKEN.findall(text.lower())
    out = list(tokens)
    for n in range(2, order + 1):
        out.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return out


def hashed_counts(text: str, *, buckets: int = SKETCH_BUCKETS, order: int = 2, seed: int = 0) -> SparseCounts:
    """Signed hashed n-gram counts of one text (the part of a sketch computed once per text).

    Each n-gram ``g`` adds ``+1`` or ``-1`` (top bit of ``xxh3_64(g, seed)``) to bucket
    ``xxh3_64(g, seed) mod buckets``; signed hashing keeps collisions unbiased in inner products.

    Parameters
    ----------
    text : str
        The text.
    buckets : int
        Sketch width (a power of two is fastest, any positive int works).
    order : int
        Longest n-gram.
    seed : int
        Hash seed.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted unique bucket indices (int64) and their signed sums (float32).
    """
    slots, sums = _bucket_sums(text, buckets, order, seed)
    idx = np.flatnonzero(np.bincount(slots, minlength=buckets)).astype(
        np.int64
    )  # touched, even if summing to 0
    return idx, sums[idx].astype(np.float32)


def _bucket_sums(text: str, buckets: int, order: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket of every n-gram occurrence of one text, and the signed counts of all ``buckets`` (float64).

    The bucket of n-gram ``g`` is ``xxh3_64(g, seed) mod buckets``, its sign the hash's top bit.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    grams = ngrams(text, order=order)
    h = np.fromiter(
        (xxhash.xxh3_64_intdigest(g.encode("utf-8"), seed) for g in grams), dtype=np.uint64, count=len(grams)
    )
    slots = (h % np.uint64(buckets)).astype(np.intp)
    signs = np.where(h >= np.uint64(_SIGN_BIT), -1.0, 1.0)
    return slots, np.bincount(slots, weights=signs, minlength=buckets)


def fuse(embeddings: np.ndarray, sketches: np.ndarray, w: float) -> np.ndarray:
    """Concatenate ``sqrt(w) * embeddings`` and ``sqrt(1 - w) * sketches`` (rows aligned).

    With unit rows on both sides, squared distances of fused rows are ``w`` times the embedding cost
    plus ``1 - w`` times the sketch cost, and fused rows are unit vectors.

    Parameters
    ----------
    embeddings : numpy.ndarray, shape (n, d)
        Unit sentence embeddings.
    sketches : numpy.ndarray, shape (n, b)
        Unit n-gram sketches.
    w : float
        Weight of the embedding cost, in [0, 1].

    Returns
    -------
    numpy.ndarray, shape (n, d + b), float32
    """
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must be in [0, 1], got {w}")
    if embeddings.shape[0] != sketches.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {sketches.shape[0]} sketches")
    return np.concatenate(
        [math.sqrt(w) * embeddings.astype(np.float32), math.sqrt(1.0 - w) * sketches.astype(np.float32)],
        axis=1,
    )


def tf_rows(texts: Sequence[str | None], *, buckets: int = SKETCH_BUCKETS) -> np.ndarray:
    """Stored form of the sketches: signed sublinear term frequencies, one dense row per text.

    Row ``i`` holds ``sign(v) log(1 + |v|)`` of the hashed uni+bigram counts ``v`` of ``texts[i]``
    (:func:`hashed_counts`, seed 0), before any IDF weight or normalisation, so rows never depend on
    other texts and are computed once, at ingest. A missing (None) or token-less text gives a zero
    row, which the engine reads as "no sketch". The n-grams of a block of texts are tokenised and
    hashed together in numpy (:func:`gotd.server.selection.ngram_hash.batch_ngram_hashes`), the same
    hashes as :func:`hashed_counts` text by text (tests/test_sketch_rows.py checks the rows bit for bit).

    Parameters
    ----------
    texts : sequence of str or None
    buckets : int
        Sketch width.

    Returns
    -------
    numpy.ndarray, shape (len(texts), buckets), float16
    """
    return tf_sparse(texts, buckets=buckets).dense()


def tf_sparse(texts: Sequence[str | None], *, buckets: int = SKETCH_BUCKETS) -> SparseRows:
    """The rows of :func:`tf_rows` in sparse form, built without the dense rows (the store's sketch
    function: it writes the rows sparse, :mod:`gotd.cache.store.sketch_codec`).

    Returns
    -------
    SparseRows
        ``len(texts)`` rows of ``buckets``: the non-zero values, buckets ascending per row.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    rows = np.array([i for i, text in enumerate(texts) if text], dtype=np.int64)
    owners, slots, values = [], [], []
    for start in range(0, len(rows), _TF_BLOCK):
        part = rows[start : start + _TF_BLOCK]
        owner, slot, value = _tf_block([str(texts[i]) for i in part.tolist()], buckets)
        owners.append(part[owner])
        slots.append(slot)
        values.append(value)
    owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    return SparseRows(
        buckets,
        indptr_of(np.bincount(owner, minlength=len(texts))),
        np.concatenate(slots) if slots else np.zeros(0, dtype=np.int64),
        np.concatenate(values) if values else np.zeros(0, dtype=np.float16),
    )


def _tf_block(texts: list[str], buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(text, bucket, value)`` of every non-zero term frequency of a block of texts, ordered by text
    then bucket: one sort of the n-grams' ``(text, bucket, sign)`` keys; a cell's sum is its n-grams
    less twice its negative ones."""
    owner, hashes = batch_ngram_hashes(texts)
    narrow = len(texts) * buckets < 1 << 30  # the keys fit an int32 (faster to sort)
    key = (owner * buckets + _slots(hashes, buckets)).astype(np.int32 if narrow else np.int64)
    key <<= 1
    key |= hashes.view(np.int64) < 0  # the top bit set: -1
    ordered = np.sort(key)
    cells = ordered >> 1
    first = np.ones(len(ordered), dtype=bool)
    np.not_equal(cells[1:], cells[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    negative = np.add.reduceat(ordered & 1, starts) if len(starts) else np.zeros(0, dtype=ordered.dtype)
    sums = np.diff(starts, append=len(ordered)) - 2 * negative
    keep = sums != 0  # a bucket whose signs cancel stays a zero
    cell = cells[starts][keep].astype(np.int64)
    return cell // buckets, cell % buckets, _sublinear(sums[keep].astype(np.float64))


def _slots(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """``hashes mod buckets`` as int64 (a mask of the low bits when ``buckets`` is a power of two)."""
    if buckets & (buckets - 1) == 0:
        masked: np.ndarray = hashes.view(np.int64) & (buckets - 1)
        return masked
    return (hashes % np.uint64(buckets)).astype(np.int64)


def _sublinear(sums: np.ndarray) -> np.ndarray:
    """``sign(v) log(1 + |v|)`` of integer-valued float64 ``v`` as float16, from a table of the values
    present (the same float64 expression per value as computed element by element, then rounded)."""
    if not len(sums):
        return np.zeros(0, dtype=np.float16)
    top = int(np.abs(sums).max())
    values = np.arange(-top, top + 1, dtype=np.float64)
    table = (np.sign(values) * np.log1p(np.abs(values))).astype(np.float16)
    found: np.ndarray = table[sums.astype(np.int64) + top]
    return found


def document_frequency(tf: np.ndarray | SparseRows) -> np.ndarray:
    """Rows with a non-zero value, per bucket, of stored sketches (blockwise; no float copy of ``tf``).

    Parameters
    ----------
    tf : numpy.ndarray, shape (n, buckets), or SparseRows
        Rows of :func:`tf_rows` (or :func:`tf_sparse`, as a pool snapshot keeps them).

    Returns
    -------
    numpy.ndarray, shape (buckets,), int64
    """
    if isinstance(tf, SparseRows):
        return sparse_tf.document_frequency(tf)
    df = np.zeros(tf.shape[1], dtype=np.int64)
    for start in range(0, tf.shape[0], _BLOCK_ROWS):
        # float16 bits: tf_rows never stores -0.0, so a non-zero bit pattern is a non-zero value
        df += np.count_nonzero(tf[start : start + _BLOCK_ROWS].view(np.uint16), axis=0)
    return df


def idf_from_df(df: np.ndarray, n: int) -> np.ndarray:
    """Smoothed IDF ``log((1 + n) / (1 + df)) + 1`` per bucket, float32 (smoothed as in scikit-learn)."""
    return (np.log((1.0 + n) / (1.0 + df.astype(np.float64))) + 1.0).astype(np.float32)


def unit_sketches(tf: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """IDF-weighted, L2-normalised float32 sketches from stored rows (zero rows stay zero).

    Parameters
    ----------
    tf : numpy.ndarray, shape (n, buckets)
        Rows of :func:`tf_rows`.
    idf : numpy.ndarray, shape (buckets,)
        Weights, e.g. :func:`idf_from_df` of the pool.

    Returns
    -------
    numpy.ndarray, shape (n, buckets), float32
    """
    if idf.shape != (tf.shape[1],):
        raise ValueError(f"idf must have shape ({tf.shape[1]},), got {idf.shape}")
    out = torch.empty(tf.shape, dtype=torch.float32)
    weights = torch.from_numpy(np.ascontiguousarray(idf, dtype=np.float32))
    for start in range(0, tf.shape[0], _BLOCK_ROWS):
        out[start : start + _BLOCK_ROWS] = _unit_block(tf[start : start + _BLOCK_ROWS], weights)
    return out.numpy()


def inverse_norms(tf: np.ndarray | SparseRows, idf: np.ndarray) -> np.ndarray:
    """``1 / ||tf_i * idf||`` per row, float32 (1 for a zero row), blockwise: with the IDF weights, all
    :func:`unit_sketches` needs besides the stored rows, so compact rows can be normalised per block.
    Sparse rows: from their entries (the same sums in another order: float rounding apart).

    Returns
    -------
    numpy.ndarray, shape (n,), float32
    """
    if isinstance(tf, SparseRows):
        return sparse_tf.inverse_norms(tf, idf)
    if idf.shape != (tf.shape[1],):
        raise ValueError(f"idf must have shape ({tf.shape[1]},), got {idf.shape}")
    out = np.empty(tf.shape[0], dtype=np.float32)
    weights = torch.from_numpy(np.ascontiguousarray(idf, dtype=np.float32))
    for start in range(0, tf.shape[0], _BLOCK_ROWS):
        block = torch.from_numpy(np.ascontiguousarray(tf[start : start + _BLOCK_ROWS])).to(torch.float32)
        norms = torch.linalg.vector_norm(block.mul_(weights), dim=1)
        out[start : start + len(block)] = torch.where(norms > 0, norms, torch.ones_like(norms)).reciprocal_()
    return out


def _unit_block(tf: np.ndarray, idf: torch.Tensor) -> torch.Tensor:
    """One block of :func:`unit_sketches` (torch: float16 to float32, scale and normalise in place)."""
    block = torch.from_numpy(np.ascontiguousarray(tf)).to(torch.float32).mul_(idf)
    norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
    return block.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))


def fused_matrix(vectors: np.ndarray, tf: np.ndarray, idf: np.ndarray, w: float) -> np.ndarray:
    """Fused rows ``(sqrt(w) e, sqrt(1 - w) s)`` built blockwise into one float32 array.

    Same result as ``fuse(vectors, unit_sketches(tf, idf), w)`` without the intermediate float32 copy
    of the sketches: peak memory is the output plus one block.

    Parameters
    ----------
    vectors : numpy.ndarray, shape (n, d)
        Unit embeddings.
    tf : numpy.ndarray, shape (n, buckets)
        Stored sketch rows (:func:`tf_rows`).
    idf : numpy.ndarray, shape (buckets,)
        IDF weights.
    w : float
        Weight of the embedding cost, in [0, 1].

    Returns
    -------
    numpy.ndarray, shape (n, d + buckets), float32, C-contiguous
    """
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must be in [0, 1], got {w}")
    n, d = vectors.shape
    if tf.shape[0] != n:
        raise ValueError(f"{n} embeddings but {tf.shape[0]} sketches")
    if idf.shape != (tf.shape[1],):
        raise ValueError(f"idf must have shape ({tf.shape[1]},), got {idf.shape}")
    out = torch.empty((n, d + tf.shape[1]), dtype=torch.float32)
    a, b = math.sqrt(w), math.sqrt(1.0 - w)
    e = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    weights = torch.from_numpy(np.ascontiguousarray(idf, dtype=np.float32))
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(n, start + _BLOCK_ROWS)
        torch.mul(e[start:stop], a, out=out[start:stop, :d])
        out[start:stop, d:] = _unit_block(tf[start:stop], weights).mul_(b)
    return out.numpy()
