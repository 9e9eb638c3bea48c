"""FAISS index per pool (neighbour queries) and deterministic k-means summaries.

Each pool's index lives in ``data_dir/indexes/<pool>/`` as ``index.faiss`` plus ``manifest.json``
naming the pool incarnation (uid), the pool version and row count it was built from, the dimension,
the factory string and an xxh3_128 checksum of the index file. Both files are written atomically
(temporary file, fsync, rename, fsync of the directory). :func:`ensure_index` trusts an index only
when its manifest matches the pool and its bytes match the checksum; otherwise it extends the index
with appended rows (when nothing else changed) or rebuilds it from LMDB.

Vectors are unit rows, so inner product = cosine similarity (``METRIC_INNER_PRODUCT``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import faiss
import numpy as np
import xxhash

from gotd.cache.errors import InvalidArgument
from gotd.cache.store.core import PoolArrays, PoolInfo, Store
from gotd.cache.store.vectors import unit_rows

__all__ = [
    "DEFAULT_FACTORY",
    "IndexManager",
    "IndexManifest",
    "SearchResult",
    "ensure_index",
    "kmeans_summary",
]

LOG = logging.getLogger(__name__)
DEFAULT_FACTORY: Final = "Flat"
INDEX_FILE: Final = "index.faiss"
MANIFEST_FILE: Final = "manifest.json"
MANIFEST_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class IndexManifest:
    """What an index file was built from."""

    pool: str
    uid: str
    version: int
    count: int
    dim: int
    factory: str
    checksum: str
    format: int = MANIFEST_FORMAT

    def matches(self, info: PoolInfo, factory: str) -> bool:
        return self.format == MANIFEST_FORMAT and (
            self.pool,
            self.uid,
            self.version,
            self.count,
            self.dim,
            self.factory,
        ) == (info.name, info.uid, info.version, info.count, info.dim, factory)


@dataclass(frozen=True, slots=True, eq=False)
class SearchResult:
    """Nearest pool rows of each query: ``scores`` and ``rows`` (q, k); row -1 where fewer exist."""

    scores: np.ndarray
    rows: np.ndarray
    ids: list[list[str]]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _read_manifest(directory: Path) -> IndexManifest | None:
    try:
        body: dict[str, Any] = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        return IndexManifest(**body)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        LOG.warning("index manifest in %s is unreadable (%s); rebuilding", directory, err)
        return None


def _read_index(directory: Path, manifest: IndexManifest) -> Any | None:
    """The index file's index if its checksum matches the manifest, else None."""
    try:
        data = (directory / INDEX_FILE).read_bytes()
    except OSError:
        return None
    if xxhash.xxh3_128_hexdigest(data) != manifest.checksum:
        LOG.warning("index file in %s does not match its manifest checksum; rebuilding", directory)
        return None
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as err:
        LOG.warning("index file in %s does not load (%s); rebuilding", directory, err)
        return None
    if index.ntotal != manifest.count or index.d != manifest.dim:
        return None
    return index


def _build(vectors: np.ndarray, factory: str) -> Any:
    dim = vectors.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InvalidArgument(f"FAISS index factory {factory!r} is not valid ({err})") from None
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as err:
            LOG.warning("cannot train %r on %d vectors (%s); using a flat index", factory, len(vectors), err)
            index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


class IndexManager:
    """Keeps each pool's FAISS index current, on disk and in memory.

    Parameters
    ----------
    store : Store
        The candidate store (source of truth).
    factory : str
        FAISS factory string ("Flat", "IVF256,Flat", "HNSW32", ...), inner-product metric.
    """

    def __init__(self, store: Store, *, factory: str = DEFAULT_FACTORY) -> None:
        self.store = store
        self.factory = factory
        self.builds = 0
        self.extends = 0
        self._loaded: dict[str, tuple[IndexManifest, Any]] = {}
        self._lock = threading.Lock()

    def ensure(self, pool: str) -> Any:
        """The pool's index at its current version (loaded, extended or rebuilt as needed)."""
        with self._lock:
            info = self.store.get_pool(pool)
            cached = self._loaded.get(pool)
            if cached is not None and cached[0].matches(info, self.factory):
                return cached[1]
            directory = self.store.index_dir(pool)
            found = _read_manifest(directory)
            if found is not None and found.matches(info, self.factory):
                index = _read_index(directory, found)
                if index is not None:
                    self._loaded[pool] = (found, index)
                    return index
            self._loaded[pool] = self._refresh(pool, directory, found)
            return self._loaded[pool][1]

    def _refresh(self, pool: str, directory: Path, old: IndexManifest | None) -> tuple[IndexManifest, Any]:
        arrays = self.store.load_vectors(pool)
        index = self._extend(directory, old, arrays)
        if index is None:
            index = _build(arrays.vectors, self.factory)
            self.builds += 1
            LOG.info(
                "built %s index of pool %s: %d vectors (version %d)",
                self.factory,
                pool,
                index.ntotal,
                arrays.version,
            )
        data = faiss.serialize_index(index).tobytes()
        manifest = IndexManifest(
            pool=pool,
            uid=arrays.uid,
            version=arrays.version,
            count=len(arrays.ids),
            dim=arrays.dim,
            factory=self.factory,
            checksum=xxhash.xxh3_128_hexdigest(data),
        )
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(directory / INDEX_FILE, data)
        _write_atomic(directory / MANIFEST_FILE, json.dumps(asdict(manifest), indent=1).encode())
        return manifest, index

    def _extend(self, directory: Path, old: IndexManifest | None, arrays: PoolArrays) -> Any | None:
        """The old index plus the appended rows, when rows were only appended since it was built."""
        if old is None or (old.pool, old.uid, old.dim, old.factory) != (
            arrays.name,
            arrays.uid,
            arrays.dim,
            self.factory,
        ):
            return None
        if old.version > arrays.version or old.count > len(arrays.ids):
            return None
        changed = np.flatnonzero(arrays.row_versions > np.uint64(old.version))
        if len(changed) and changed[0] < old.count:
            return None
        index = _read_index(directory, old)
        if index is None:
            return None
        index.add(arrays.vectors[old.count :])
        self.extends += 1
        LOG.info(
            "extended index of pool %s by %d rows (version %d)",
            arrays.name,
            len(arrays.ids) - old.count,
            arrays.version,
        )
        return index

    def search(self, pool: str, queries: np.ndarray, k: int) -> SearchResult:
        """The ``k`` nearest pool rows (cosine) of each query.

        Parameters
        ----------
        queries : numpy.ndarray
            Shape ``(q, d)``; normalised to unit rows here.
        k : int
            Neighbours per query (>= 1).
        """
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}")
        index = self.ensure(pool)
        x = np.asarray(queries, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != index.d:
            raise InvalidArgument(f"pool {pool!r}: queries must have shape (q, {index.d}), got {x.shape}")
        units = unit_rows(x, what=f"pool {pool!r} queries")
        scores, rows = index.search(units, k)
        flat = [int(r) for r in rows.reshape(-1) if r >= 0]
        names = dict(zip(flat, self.store.ids_for_rows(pool, flat), strict=True)) if flat else {}
        ids = [[names[int(r)] for r in line if r >= 0] for line in rows]
        return SearchResult(scores=scores.astype(np.float32), rows=rows.astype(np.int64), ids=ids)

    def forget(self, pool: str) -> None:
        """Drop the in-memory index of a pool."""
        with self._lock:
            self._loaded.pop(pool, None)


def ensure_index(store: Store, pool: str, *, factory: str = DEFAULT_FACTORY) -> Any:
    """The pool's FAISS index, rebuilt when its manifest names another version or its file is bad."""
    return IndexManager(store, factory=factory).ensure(pool)


def search(
    store: Store, pool: str, queries: np.ndarray, k: int, *, factory: str = DEFAULT_FACTORY
) -> SearchResult:
    """The ``k`` nearest rows of each query in ``pool`` (one-off; keep an :class:`IndexManager` to reuse)."""
    return IndexManager(store, factory=factory).search(pool, queries, k)


def kmeans_summary(
    vectors: np.ndarray, k: int, seed: int, *, niter: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic k-means summary of a point cloud (FAISS k-means with a fixed seed).

    Parameters
    ----------
    vectors : numpy.ndarray
        Points, shape ``(n, d)``, float32.
    k : int
        Number of clusters (>= 1). With ``k >= n`` every point is its own cluster.
    seed : int
        Seed of the initialisation and subsampling: the same input and seed give the same output.
    niter : int
        Lloyd iterations.

    Returns
    -------
    centroids : numpy.ndarray
        Shape ``(k', d)``, float32, ``k' <= k`` (clusters left empty are dropped).
    weights : numpy.ndarray
        Shape ``(k',)``, float32: cluster sizes / n (they sum to 1).
    labels : numpy.ndarray
        Shape ``(n,)``, int64: each point's cluster in ``0..k'-1``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise InvalidArgument(f"k-means needs a non-empty (n, d) array, got shape {x.shape}")
    if k < 1:
        raise InvalidArgument(f"k must be >= 1, got {k}")
    n, d = x.shape
    if k >= n:
        return x.copy(), np.full(n, 1.0 / n, dtype=np.float32), np.arange(n, dtype=np.int64)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, assigned = km.index.search(x, 1)
    labels = assigned.reshape(-1).astype(np.int64)
    counts = np.bincount(labels, minlength=k)
    keep = np.flatnonzero(counts)
    remap = np.full(k, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    if km.centroids is None:
        raise RuntimeError("FAISS k-means returned no centroids")
    centroids = np.ascontiguousarray(km.centroids[keep], dtype=np.float32)
    weights = (counts[keep] / n).astype(np.float32)
    return centroids, weights, remap[labels]
