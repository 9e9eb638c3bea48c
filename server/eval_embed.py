"""Embeddings of a whole evaluation corpus, computed once and cached on disk as ``.npy``.

MiniLM encodes only about 40 wiki extracts per second on a 2-core CPU, so the evaluation embeds the
corpus once and every later run loads the matrix in milliseconds. The file name carries the model id
and a hash of every (id, text) pair, so a changed corpus or model never reads a stale matrix. Files
are written with ``allow_pickle=False`` next to a JSON sidecar recording how long the encoding took
(reported as the embedding time, separately from selection time).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import xxhash

__all__ = [
    "CorpusEmbeddings",
    "TextEncoder",
    "corpus_hash",
    "default_cache_dir",
    "embed_corpus",
    "embedding_cache_path",
]

LOG = logging.getLogger(__name__)

#: Environment variable overriding the default cache directory.
CACHE_ENV = "GOTD_EVAL_CACHE"


class TextEncoder(Protocol):
    """What the evaluation needs of an embedder (``gotd.server.embedder.Embedder`` fits)."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit rows, shape ``(len(texts), dim)``, float32."""
        ...


@dataclass(frozen=True, slots=True)
class CorpusEmbeddings:
    """An embedded corpus.

    Attributes
    ----------
    vectors : numpy.ndarray, shape (n, d)
        float32 unit rows, in corpus order.
    model_id : str
        Encoder id.
    encode_seconds : float
        Wall time of the encoding when the file was made (0 for supplied vectors).
    load_seconds : float
        Wall time of this call (a cache hit is a file read).
    cached : bool
        True when the matrix came from the cache file.
    path : Path or None
        The cache file.
    """

    vectors: np.ndarray
    model_id: str
    encode_seconds: float
    load_seconds: float
    cached: bool
    path: Path | None


def default_cache_dir() -> Path:
    """``$GOTD_EVAL_CACHE`` if set, else ``~/.cache/gotd-eval``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gotd-eval"


def corpus_hash(ids: Sequence[str], texts: Sequence[str]) -> str:
    """xxh3-128 hex digest of every (id, text) pair in order (NUL-separated)."""
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    h = xxhash.xxh3_128()
    for i, t in zip(ids, texts, strict=True):
        h.update(i.encode("utf-8"))
        h.update(b"\0")
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def embedding_cache_path(
    ids: Sequence[str], texts: Sequence[str], *, model_id: str, cache_dir: Path | None = None
) -> Path:
    """Cache file of a corpus: ``<cache_dir>/<model id>-<corpus_hash>.npy``."""
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    return directory / f"{safe_model}-{corpus_hash(ids, texts)}.npy"


def embed_corpus(
    ids: Sequence[str],
    texts: Sequence[str],
    encoder: Callable[[], TextEncoder],
    *,
    model_id: str,
    cache_dir: Path | None = None,
    chunk: int = 512,
) -> CorpusEmbeddings:
    """Embeddings of ``texts``, read from ``cache_dir`` or encoded once and written there.

    Parameters
    ----------
    ids, texts : sequence of str
        The corpus, in order; both enter the cache key.
    encoder : callable
        Builds the encoder; called only on a cache miss (loading a model costs seconds).
    model_id : str
        Encoder id for the cache key (must match what ``encoder()`` would load).
    cache_dir : Path, optional
        Directory of the ``.npy`` files; default :func:`default_cache_dir`.
    chunk : int
        Texts per encode call (progress is logged per chunk).

    Returns
    -------
    CorpusEmbeddings
        Rows in the order of ``texts``.
    """
    start = time.perf_counter()
    path = embedding_cache_path(ids, texts, model_id=model_id, cache_dir=cache_dir)
    meta_path = path.with_suffix(".json")
    if path.is_file():
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape[0] == len(texts) and vectors.dtype == np.float32:
            encode_seconds = _read_encode_seconds(meta_path)
            LOG.info("corpus embeddings loaded from %s", path)
            return CorpusEmbeddings(
                vectors, model_id, encode_seconds, time.perf_counter() - start, cached=True, path=path
            )
        LOG.warning("ignoring malformed embedding cache %s (shape %s)", path, vectors.shape)
    model = encoder()
    if model.model_id != model_id:
        raise ValueError(f"encoder loads {model.model_id!r}, expected {model_id!r}")
    began = time.perf_counter()
    parts = []
    for s in range(0, len(texts), chunk):
        parts.append(model.encode(list(texts[s : s + chunk])))
        LOG.info("embedded %d/%d texts (%.0f s)", min(len(texts), s + chunk), len(texts), _since(began))
    vectors = np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, model.dim)), np.float32)
    encode_seconds = _since(began)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    os.replace(tmp, path)
    meta = {
        "model_id": model_id,
        "n": len(texts),
        "dim": int(vectors.shape[1]),
        "encode_seconds": encode_seconds,
    }
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    LOG.info("corpus embeddings written to %s (%.0f s)", path, encode_seconds)
    return CorpusEmbeddings(
        vectors, model_id, encode_seconds, time.perf_counter() - start, cached=False, path=path
    )


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _read_encode_seconds(meta_path: Path) -> float:
    try:
        return float(json.loads(meta_path.read_text(encoding="utf-8"))["encode_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")
