"""Ground costs of a selection: the paper's embedding cost or the fused embedding + n-gram cost.

``EMBEDDING`` is the squared Euclidean distance between unit sentence embeddings (Kang et al.,
2024). ``FUSED`` adds the squared distance between unit TF-IDF sketches of hashed word uni- and
bigrams, weighted ``w`` and ``1 - w``: every candidate and target becomes the fused row
``(sqrt(w) e, sqrt(1 - w) s)`` (:func:`gotd.server.selection.sketches.fused_matrix`), whose squared
distances are exactly that weighted sum, so the OT engine runs unchanged on fused rows and the
ranking is still the calibrated OT gradient. The sketches are stored once per text at ingest
(term frequencies); the IDF weights come from the pool's document frequencies, so they are a
property of the pool version, like the pool itself (a potential epoch freezes the IDF of the version
that opened it: :meth:`SketchFactors.under`). A pool's fused rows are never materialised:
they are :class:`gotd.server.ot.rows.StackedRows` over the stored embeddings and term frequencies
with the IDF weights and each row's inverse norm as factors (:class:`SketchFactors`, 4 bytes per
candidate besides the stored rows, cached per pool version by the engine), upcast and multiplied block by
block inside the OT passes (one GEMM per part into one accumulator).

Also :func:`near_duplicates`: candidates whose embedding is almost a target's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
import xxhash

from gotd.cache.errors import FailedPrecondition, InvalidArgument
from gotd.cache.sketch_rows import SparseRows
from gotd.server.ot.parts import AnyPart
from gotd.server.ot.rows import Part, Rows, StackedRows
from gotd.server.selection.metric import LearnedMetric
from gotd.server.selection.sketches import (
    document_frequency,
    fused_matrix,
    idf_from_df,
    inverse_norms,
    unit_sketches,
)
from gotd.server.selection.sparse_tf import row_dots, sparse_part

__all__ = [
    "DEFAULT_EMBEDDING_WEIGHT",
    "Cost",
    "CostConfig",
    "Features",
    "ResolvedCost",
    "SketchFactors",
    "complete_sketches",
    "fused_rows",
    "fused_targets",
    "near_duplicates",
    "pool_features",
    "resolve_cost",
    "target_features",
]

Sketches = np.ndarray | SparseRows
"""Stored sketch rows: dense float16 ``(n, buckets)``, or sparse as a pool snapshot keeps them."""

#: Weight of the embedding cost in the fused cost (docs/evaluation.md, "Choosing the defaults").
DEFAULT_EMBEDDING_WEIGHT = 0.5
_BLOCK_ROWS = 1 << 14


class Cost(StrEnum):
    """Ground cost; ``AUTO`` resolves to ``FUSED`` when every candidate and target has a sketch."""

    AUTO = "auto"
    EMBEDDING = "embedding"
    FUSED = "fused"


@dataclass(frozen=True, slots=True)
class CostConfig:
    """Cost settings of one selection (validated on construction).

    Attributes
    ----------
    cost : Cost
        Requested cost.
    embedding_weight : float
        ``FUSED``: weight ``w`` in [0, 1] of the embedding cost.
    metric : LearnedMetric or None
        ``FUSED``: a metric learned from the target set (:mod:`gotd.server.selection.metric`).
    """

    cost: Cost = Cost.AUTO
    embedding_weight: float = DEFAULT_EMBEDDING_WEIGHT
    metric: LearnedMetric | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "cost", Cost(self.cost))
        except ValueError:
            raise ValueError(f"cost must be one of {[c.value for c in Cost]}, got {self.cost!r}") from None
        w = self.embedding_weight
        if not (math.isfinite(w) and 0.0 <= w <= 1.0):
            raise ValueError(f"embedding_weight must be in [0, 1], got {w!r}")

    @property
    def embedding_only(self) -> bool:
        """Whether this is the embedding cost whatever the sketches (``EMBEDDING``, or ``w = 1``)."""
        return self.cost is Cost.EMBEDDING or self.embedding_weight == 1.0


@dataclass(frozen=True, slots=True)
class ResolvedCost:
    """The cost of a request once resolved: ``EMBEDDING`` (weight 1.0) or ``FUSED`` at a weight, with
    the direction learned from the target set when the validation chose one."""

    cost: Cost
    embedding_weight: float
    metric: LearnedMetric | None = None

    @property
    def tag(self) -> str:
        """Short name of the feature space, for cache keys and pool snapshot names."""
        if self.cost is Cost.EMBEDDING:
            return "emb"
        fused = f"fused{self.embedding_weight!r}"
        return fused if self.metric is None else f"{fused}-metric{self.metric.digest}"


@dataclass(frozen=True, slots=True)
class Features:
    """A pool's rows in the feature space of a resolved cost.

    Attributes
    ----------
    x : torch.Tensor or StackedRows, shape (n, D)
        Embeddings (``EMBEDDING``, shared with the pool snapshot) or the compact fused rows (the
        pool's stored embeddings and term frequencies, not copied).
    cost : Cost
        ``EMBEDDING`` or ``FUSED``.
    embedding_weight : float
        ``w`` of the fused rows (1.0 for ``EMBEDDING``).
    idf : numpy.ndarray or None
        ``FUSED``: IDF weights of the pool, applied to the targets' sketches too.
    metric : LearnedMetric or None
        ``FUSED``: the learned direction, one more column of the rows (the targets' too).
    """

    x: Rows
    cost: Cost
    embedding_weight: float
    idf: np.ndarray | None = None
    metric: LearnedMetric | None = None

    @property
    def tag(self) -> str:
        """Short name of the feature space, for cache keys and pool snapshot names."""
        return ResolvedCost(self.cost, self.embedding_weight, self.metric).tag


def complete_sketches(tf: Sketches | None) -> bool:
    """Whether ``tf`` holds a non-zero sketch for every row (a zero row means "no text").

    Sparse rows (a snapshot's): block by block, each row's entries tested (:meth:`SparseRows.row_any`).

    Stored float16 rows of a width divisible by 4 are read as uint64 words of four values, a value
    being zero when its bits other than the sign are (so ``-0.0`` is zero, NaN is not): a quarter of
    the comparisons of reading them as floats, the same answer.
    """
    if isinstance(tf, SparseRows):
        return len(tf) > 0 and all(block.row_any().all() for _start, block in tf.blocks(_BLOCK_ROWS))
    if tf is None or tf.ndim != 2 or tf.shape[0] == 0:
        return False
    packed = tf.dtype == np.float16 and tf.shape[1] % 4 == 0 and tf.flags.c_contiguous
    if not _nonzero_rows(tf[:1], packed):  # rows sent as vectors are zero: answered by the first
        return False
    return all(
        _nonzero_rows(tf[start : start + _BLOCK_ROWS], packed) for start in range(0, tf.shape[0], _BLOCK_ROWS)
    )


_FLOAT16_MAGNITUDES = np.uint64(0x7FFF_7FFF_7FFF_7FFF)


def _nonzero_rows(block: np.ndarray, packed: bool) -> bool:
    if packed:
        return bool(((block.view(np.uint64) & _FLOAT16_MAGNITUDES) != 0).any(axis=1).all())
    return bool(np.any(block != 0, axis=1).all())


def resolve_cost(config: CostConfig, *, pool: str, pool_sketched: bool, target_sketched: bool) -> Cost:
    """``EMBEDDING`` or ``FUSED`` for a request.

    Raises
    ------
    FailedPrecondition
        ``FUSED`` was asked for and the pool or the target lacks sketches (rows sent as vectors).
    """
    if config.embedding_only:
        return Cost.EMBEDDING
    if pool_sketched and target_sketched:
        return Cost.FUSED
    if config.cost is Cost.FUSED:
        missing = [
            what
            for what, ok in ((f"pool {pool!r}", pool_sketched), ("the target set", target_sketched))
            if not ok
        ]
        raise FailedPrecondition(
            f"the fused cost needs n-gram sketches, and {' and '.join(missing)} has rows sent as "
            "embeddings without text; send texts, or use the embedding cost"
        )
    return Cost.EMBEDDING


@dataclass(frozen=True, slots=True)
class SketchFactors:
    """What the fused rows need besides a pool's stored arrays: a property of the pool version.

    Attributes
    ----------
    idf : numpy.ndarray, shape (buckets,), float32
        IDF weights from the pool's document frequencies.
    inverse_norms : numpy.ndarray, shape (n,), float32
        ``1 / ||tf_i * idf||`` of every row.
    """

    idf: np.ndarray
    inverse_norms: np.ndarray

    @staticmethod
    def of(tf: Sketches, deleted: np.ndarray | None = None, idf: np.ndarray | None = None) -> SketchFactors:
        """The factors of the pool rows ``tf``; rows marked in ``deleted`` (bool mask) do not count
        in the document frequencies (their inverse norms are computed all the same). ``idf``: the
        rows' :meth:`pool_idf` when already known."""
        idf = SketchFactors.pool_idf(tf, deleted) if idf is None else idf
        return SketchFactors(idf, inverse_norms(tf, idf))

    @staticmethod
    def pool_idf(tf: Sketches, deleted: np.ndarray | None = None) -> np.ndarray:
        """IDF weights of the pool rows ``tf`` (rows marked in ``deleted`` left out): the part of the
        factors the cost validation needs."""
        df, n = document_frequency(tf), tf.shape[0]
        if deleted is not None and deleted.any():
            gone = tf.take(np.flatnonzero(deleted)) if isinstance(tf, SparseRows) else tf[deleted]
            df -= document_frequency(gone)
            n -= int(deleted.sum())
        return idf_from_df(df, n)

    @staticmethod
    def under(tf: Sketches, idf: np.ndarray) -> SketchFactors:
        """The factors of the rows ``tf`` under given IDF weights (a potential epoch's, frozen at the
        pool version that opened it): only the inverse norms are computed, row by row, so the factors of
        some rows are those rows' factors among all rows, bit for bit."""
        return SketchFactors(idf, inverse_norms(tf, idf))

    @property
    def nbytes(self) -> int:
        return int(self.idf.nbytes + self.inverse_norms.nbytes)


def pool_features(
    vectors: np.ndarray,
    tf: Sketches | None,
    cost: Cost,
    weight: float,
    factors: SketchFactors | None = None,
    metric: LearnedMetric | None = None,
) -> Features:
    """A pool's rows for ``cost`` (``FUSED``: IDF from the pool's document frequencies).

    The stored arrays are used as they are, never copied (float16 embeddings stay float16, upcast per
    block); ``factors`` are the pool's :class:`SketchFactors` when already known. A ``metric`` (fused
    only) adds its column ``v . x`` as a third part, computed blockwise from the stored rows (4 bytes a
    row); nothing else is materialised.
    """
    if cost is Cost.EMBEDDING:
        x = torch.from_numpy(vectors)
        if x.dtype in (torch.float32, torch.float64):
            return Features(x, Cost.EMBEDDING, 1.0)
        return Features(StackedRows((Part(x),)), Cost.EMBEDDING, 1.0)  # float16: upcast per block
    if tf is None:
        raise FailedPrecondition("the pool has no n-gram sketches")
    factors = factors or SketchFactors.of(tf)
    embeddings = Part(torch.from_numpy(vectors), math.sqrt(weight))
    sketches: AnyPart = (
        sparse_part(tf, math.sqrt(1.0 - weight), factors.idf, factors.inverse_norms)
        if isinstance(tf, SparseRows)
        else Part(
            torch.from_numpy(tf),
            math.sqrt(1.0 - weight),
            columns=torch.from_numpy(factors.idf),
            rows=torch.from_numpy(factors.inverse_norms),
        )
    )
    parts: tuple[AnyPart, ...] = (embeddings, sketches)
    if metric is not None:
        parts += (Part(torch.from_numpy(_learned_column(vectors, tf, factors, metric)[:, None])),)
    return Features(StackedRows(parts), Cost.FUSED, weight, factors.idf, metric)


def _learned_column(
    vectors: np.ndarray, tf: Sketches, factors: SketchFactors, metric: LearnedMetric
) -> np.ndarray:
    """``v . (e, s)`` of every pool row, blockwise from the stored rows (``s`` the unit TF-IDF sketch)."""
    out = np.empty(vectors.shape[0], dtype=np.float32)
    along = factors.idf.astype(np.float32) * metric.sketch  # the IDF weights folded into v once
    rows = tf if isinstance(tf, SparseRows) else SparseRows.from_dense(tf)
    dots = row_dots(rows, along, factors.inverse_norms)
    for start in range(0, vectors.shape[0], _BLOCK_ROWS):
        stop = min(vectors.shape[0], start + _BLOCK_ROWS)
        sketch = dots[start:stop]
        out[start:stop] = vectors[start:stop].astype(np.float32) @ metric.embedding + sketch
    return out


def fused_rows(
    vectors: np.ndarray, tf: Sketches, weight: float, idf: np.ndarray, metric: LearnedMetric | None = None
) -> Rows:
    """Compact fused rows at ``weight`` under the IDF weights ``idf`` (a potential epoch's), the rows'
    inverse norms under it computed for these rows only (the same bits as among all rows); with the
    learned ``metric``'s column under those weights."""
    return pool_features(vectors, tf, Cost.FUSED, weight, SketchFactors.under(tf, idf), metric).x


def target_features(features: Features, vectors: torch.Tensor, tf: np.ndarray | None) -> torch.Tensor:
    """Target rows in the pool's feature space (the pool's IDF applied to the targets' sketches)."""
    if features.cost is Cost.EMBEDDING:
        return vectors
    if features.idf is None:
        raise FailedPrecondition("the target set has no n-gram sketches")
    return fused_targets(vectors, tf, features.idf, features.embedding_weight, features.metric)


def fused_targets(
    vectors: torch.Tensor,
    tf: np.ndarray | None,
    idf: np.ndarray,
    weight: float,
    metric: LearnedMetric | None = None,
) -> torch.Tensor:
    """Target rows of the fused cost at ``weight`` under the IDF weights ``idf`` (a pool version's, or
    a potential epoch's), with the learned ``metric``'s column under those weights."""
    if tf is None:
        raise FailedPrecondition("the target set has no n-gram sketches")
    fused = fused_matrix(vectors.numpy(), tf, idf, weight)
    if metric is not None:
        column = metric.project((vectors.numpy(), unit_sketches(tf, idf)))
        fused = np.concatenate([fused, column[:, None]], axis=1)
    return torch.from_numpy(fused)


def sketch_hash(tf: np.ndarray | None) -> str:
    """Hash of a target set's sketch rows ("" without sketches): part of a fused cache key."""
    if tf is None:
        return ""
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(tf, dtype="<f2").tobytes())


def near_duplicates(vectors: np.ndarray, targets: np.ndarray, cosine: float) -> np.ndarray:
    """Rows of ``vectors`` whose cosine similarity to some target exceeds ``cosine`` (unit rows).

    Parameters
    ----------
    vectors : numpy.ndarray, shape (n, d)
        Unit candidate embeddings.
    targets : numpy.ndarray, shape (m, d)
        Unit target embeddings.
    cosine : float
        Threshold in (0, 1].

    Returns
    -------
    numpy.ndarray, shape (n,), bool
    """
    if not (math.isfinite(cosine) and 0.0 < cosine <= 1.0):
        raise InvalidArgument(f"near_duplicate_cosine must be in (0, 1], got {cosine!r}")
    y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    out = np.zeros(vectors.shape[0], dtype=bool)
    for start in range(0, vectors.shape[0], _BLOCK_ROWS):
        block = torch.from_numpy(np.ascontiguousarray(vectors[start : start + _BLOCK_ROWS], dtype=np.float32))
        out[start : start + len(block)] = (block @ y.T).amax(1).numpy() > cosine
    return out
