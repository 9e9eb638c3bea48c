"""Embeddings of evaluation texts, computed once and cached on disk.

MiniLM encodes only about 13 wiki extracts per second on a 2-core CPU, so nothing is encoded twice.
Two caches:

- :func:`embed_corpus`: a whole corpus as one ``.npy`` matrix. The file name carries the model id
  and a hash of every (id, text) pair, so a changed corpus or model never reads a stale matrix; a
  JSON sidecar records how long the encoding took.
- :func:`embed_texts`: any subset of texts, through a per-text store keyed by model and text hash
  (``<cache_dir>/<model id>-texts/shard-*.npz``). Each call that encodes something appends one shard
  (the new texts' hashes, vectors and per-text encoding seconds), so the rows one run embedded are
  reused by every later run that needs them, whatever the corpus or task draw.

Files are written with ``allow_pickle=False`` and renamed into place (readers never see a partial
file). Encoding time is reported separately from selection time.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
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
    "embed_texts",
    "embedding_cache_path",
    "text_key",
    "text_store_dir",
]

LOG = logging.getLogger(__name__)

#: Environment variable overriding the default cache directory.
CACHE_ENV = "GOTD_EVAL_CACHE"


class TextEncoder(Protocol):
    """What the evaluation needs of an embedder (``gotd.server.ingest.embedder.Embedder`` fits)."""

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


def _safe(model_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)


def embedding_cache_path(
    ids: Sequence[str], texts: Sequence[str], *, model_id: str, cache_dir: Path | None = None
) -> Path:
    """Cache file of a corpus: ``<cache_dir>/<model id>-<corpus_hash>.npy``."""
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    return directory / f"{_safe(model_id)}-{corpus_hash(ids, texts)}.npy"


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
    vectors, encode_seconds = _encode(encoder, model_id, texts, chunk)
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


def _encode(
    encoder: Callable[[], TextEncoder], model_id: str, texts: Sequence[str], chunk: int
) -> tuple[np.ndarray, float]:
    """Unit float32 embeddings of ``texts`` by a freshly built encoder, ``chunk`` texts per call
    (progress logged per call), and the seconds spent encoding."""
    model = encoder()
    if model.model_id != model_id:
        raise ValueError(f"encoder loads {model.model_id!r}, expected {model_id!r}")
    began = time.perf_counter()
    parts = []
    for s in range(0, len(texts), chunk):
        parts.append(model.encode(list(texts[s : s + chunk])))
        LOG.info("embedded %d/%d texts (%.0f s)", min(len(texts), s + chunk), len(texts), _since(began))
    vectors = np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, model.dim)), np.float32)
    return vectors, _since(began)


def text_key(text: str) -> str:
    """Key of a text in the per-text store: the xxh3-128 hex digest of its UTF-8 bytes."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def text_store_dir(model_id: str, cache_dir: Path | None = None) -> Path:
    """Directory of the per-text store of ``model_id``: ``<cache_dir>/<model id>-texts``."""
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    return directory / f"{_safe(model_id)}-texts"


def embed_texts(
    texts: Sequence[str],
    encoder: Callable[[], TextEncoder],
    *,
    model_id: str,
    cache_dir: Path | None = None,
    chunk: int = 512,
) -> CorpusEmbeddings:
    """Embeddings of ``texts``, from the per-text store where present, the rest encoded and stored.

    Parameters
    ----------
    texts : sequence of str
        Texts in any order, duplicates allowed; each is looked up by :func:`text_key`.
    encoder : callable
        Builds the encoder; called only when some text is missing from the store.
    model_id : str
        Encoder id naming the store (must match what ``encoder()`` would load).
    cache_dir : Path, optional
        Parent of the store directory; default :func:`default_cache_dir`.
    chunk : int
        Texts per encode call (progress is logged per chunk).

    Returns
    -------
    CorpusEmbeddings
        Rows in the order of ``texts``; ``encode_seconds`` is the encoding time of these texts (the
        per-text share of the encode call that stored each), ``cached`` is True when none was
        encoded now, ``path`` is the store directory.
    """
    start = time.perf_counter()
    store = text_store_dir(model_id, cache_dir)
    keys = [text_key(t) for t in texts]
    found = _read_store(store, set(keys))
    missing = list(dict.fromkeys(k for k in keys if k not in found))
    if missing:
        first = {k: t for k, t in zip(keys, texts, strict=True)}
        todo = [first[k] for k in missing]
        vectors, seconds = _encode(encoder, model_id, todo, chunk)
        per_text = seconds / len(todo)
        _write_shard(store, missing, vectors, per_text)
        found.update({k: (vectors[i], per_text) for i, k in enumerate(missing)})
    dims = {v.shape[0] for v, _ in found.values()}
    if len(dims) > 1:
        raise ValueError(f"the text store {store} mixes dimensions {sorted(dims)}")
    dim = dims.pop() if dims else 0
    out = np.zeros((len(keys), dim), dtype=np.float32)
    for i, k in enumerate(keys):
        out[i] = found[k][0]
    encode_seconds = float(sum(found[k][1] for k in keys))
    LOG.info("%d texts embedded (%d new) via %s", len(keys), len(missing), store)
    return CorpusEmbeddings(
        out, model_id, encode_seconds, time.perf_counter() - start, cached=not missing, path=store
    )


def _read_store(store: Path, wanted: set[str]) -> dict[str, tuple[np.ndarray, float]]:
    """Vectors and per-text encoding seconds of the ``wanted`` keys found in the store's shards."""
    found: dict[str, tuple[np.ndarray, float]] = {}
    for shard in sorted(store.glob("shard-*.npz")) if store.is_dir() else []:
        if len(found) == len(wanted):
            break
        try:
            with np.load(shard, allow_pickle=False) as data:
                keys = data["keys"].tolist()
                rows = [i for i, k in enumerate(keys) if k in wanted and k not in found]
                if not rows:
                    continue
                vectors, seconds = data["vectors"], data["seconds"]
                if vectors.dtype != np.float32 or not vectors.shape[0] == seconds.shape[0] == len(keys):
                    raise ValueError(f"shape {vectors.shape}, {len(keys)} keys")
                found.update({keys[i]: (vectors[i], float(seconds[i])) for i in rows})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            LOG.warning("ignoring malformed embedding shard %s (%s)", shard, err)
    return found


def _write_shard(store: Path, keys: Sequence[str], vectors: np.ndarray, per_text: float) -> Path:
    """Write one shard of the store atomically; its name hashes its keys (reruns overwrite it)."""
    store.mkdir(parents=True, exist_ok=True)
    name = xxhash.xxh3_64_hexdigest("\0".join(keys).encode("utf-8"))
    path = store / f"shard-{name}.npz"
    tmp = store / f".shard-{name}.{os.getpid()}.tmp"
    with tmp.open("wb") as handle:
        np.savez(
            handle,
            keys=np.array(keys, dtype="<U32"),
            vectors=vectors,
            seconds=np.full(len(keys), per_text, dtype=np.float64),
        )
    os.replace(tmp, path)
    return path


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _read_encode_seconds(meta_path: Path) -> float:
    try:
        return float(json.loads(meta_path.read_text(encoding="utf-8"))["encode_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")
