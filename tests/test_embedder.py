"""Embedder (real all-MiniLM-L6-v2, offline) and the text-embedding cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.errors import FailedPrecondition
from gotd.cache.store.core import Store
from gotd.cache.store.embeddings import EmbeddingCache, normalise_text
from gotd.server.ingest.embedder import DEFAULT_MODEL_ID, Embedder, embed_counting, embed_with_cache
from tests._store_helpers import model

__all__ = ["model"]

TEXTS = ["The cat sat on the mat", "A kitten is sitting on a rug", "Stock markets fell sharply today"]


def test_default_model_encodes_unit_float32_vectors(model: Embedder) -> None:
    assert model.model_id == DEFAULT_MODEL_ID
    assert model.dim == 384
    before = model.encoded
    x = model.encode(TEXTS)
    assert model.encoded == before + 3
    assert x.shape == (3, 384)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert model.encode([]).shape == (0, 384)
    assert model.encoded == before + 3
    raw = model._model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)
    np.testing.assert_allclose(x, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 2]


def test_offline_switches_are_set() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    code = "import os, gotd.server.ingest.embedder\nassert os.environ['HF_HUB_OFFLINE'] == '1'\n"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_bad_model_path_is_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not a directory"):
        Embedder(str(tmp_path / "missing"))
    with pytest.raises(FailedPrecondition):
        Embedder(batch_size=0)


def test_cache_hit_avoids_the_encoder(model: Embedder, tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        cache = EmbeddingCache(store)
        before = model.encoded
        first, n_first = embed_counting(model, cache, ["alpha beta", " alpha beta\n", "gamma", "alpha beta"])
        assert n_first == 2
        assert model.encoded == before + 2, "duplicates within a call are encoded once"
        np.testing.assert_array_equal(first[0], first[1])
        again = embed_with_cache(model, cache, ["gamma", "alpha beta"])
        assert model.encoded == before + 2, "a cached text reached the encoder"
        np.testing.assert_array_equal(again, first[[2, 0]])
        assert cache.hits == 2
        assert len(cache) == 2
    with Store(tmp_path) as reopened:
        embed_with_cache(model, EmbeddingCache(reopened), ["gamma"])
        assert model.encoded == before + 2, "the cache did not survive a restart"


def test_cache_is_per_model_and_normalises_text(tmp_path: Path) -> None:
    vector = np.arange(1, 5, dtype=np.float32)
    with Store(tmp_path) as store:
        cache = EmbeddingCache(store)
        cache.put_many("m1", ["Cafe\u0301 "], vector[None, :])
        assert normalise_text("Cafe\u0301 ") == "Caf\u00e9"
        found = cache.get_many("m1", ["Caf\u00e9", "other"])
        assert list(found) == [0]
        np.testing.assert_array_equal(found[0], vector)
        assert cache.get_many("m2", ["Caf\u00e9"]) == {}
        assert cache.misses == 2
