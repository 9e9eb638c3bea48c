"""Embedder (real all-MiniLM-L6-v2, offline) and the text-embedding cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.errors import FailedPrecondition
from gotd.cache.store.core import Store
from gotd.cache.store.embeddings import EmbeddingCache, normalise_text
from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.server.ingest import embedder as embedder_module
from gotd.server.ingest.embedder import (
    DEFAULT_MODEL_ID,
    Embedder,
    configured_dimension,
    embed_counting,
    embed_with_cache,
)
from tests._store_helpers import model
from tests.conftest import clustered, vector_records

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


def _module_dir(tmp_path: Path, modules: list[dict[str, str]], configs: dict[str, object]) -> Path:
    tmp_path.mkdir()
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    for sub, config in configs.items():
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_configured_dimension_reads_the_module_layout(model: Embedder, tmp_path: Path) -> None:
    assert configured_dimension(model.model_path) == model.dim == 384
    st = "sentence_transformers.models."
    pooling = {"type": st + "Pooling", "path": "1_Pooling"}
    transformer = {"type": st + "Transformer", "path": ""}
    two_modes = {
        "word_embedding_dimension": 384,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": True,
    }
    assert (
        configured_dimension(_module_dir(tmp_path / "a", [transformer, pooling], {"1_Pooling": two_modes}))
        == 768
    )
    dense = {"type": st + "Dense", "path": "2_Dense"}
    one_mode = {
        "word_embedding_dimension": 384,
        "pooling_mode_cls_token": True,
        "pooling_mode_max_tokens": False,
    }
    configs = {"1_Pooling": one_mode, "2_Dense": {"in_features": 384, "out_features": 256}}
    assert configured_dimension(_module_dir(tmp_path / "b", [transformer, pooling, dense], configs)) == 256
    custom = {"type": "my_package.Projection", "path": "2_Projection"}
    assert (
        configured_dimension(
            _module_dir(tmp_path / "c", [transformer, pooling, custom], {"1_Pooling": one_mode})
        )
        is None
    )
    assert configured_dimension(_module_dir(tmp_path / "d", [transformer], {})) is None  # no pooling: unknown
    assert (
        configured_dimension(_module_dir(tmp_path / "e", [transformer, pooling], {})) is None
    )  # config missing
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "modules.json").write_text("{not json")
    assert configured_dimension(tmp_path / "f") is None
    assert configured_dimension(tmp_path / "missing") is None


def test_lazy_embedder_loads_the_model_at_its_first_text(model: Embedder) -> None:
    lazy = Embedder(preload=False)
    assert (lazy.loaded, lazy.dim, lazy.model_id) == (False, 384, DEFAULT_MODEL_ID)
    assert lazy.encode([]).shape == (0, 384)
    assert not lazy.loaded, "no text, no model"
    np.testing.assert_array_equal(lazy.encode(TEXTS), model.encode(TEXTS))
    assert lazy.loaded
    assert lazy.encoded == 3


def test_lazy_embedder_refuses_a_model_unlike_its_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedder_module, "configured_dimension", lambda _path: 100)
    lazy = Embedder(preload=False)
    assert lazy.dim == 100
    with pytest.raises(FailedPrecondition, match="embeds in 384 dimensions; its configuration says 100"):
        lazy.encode(TEXTS)
    assert not lazy.loaded
    assert lazy.encoded == 0


def test_server_without_preload_loads_the_encoder_at_its_first_text(
    client: Client, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    x = clustered(300, seed=1)
    y = clustered(20, seed=2, centers=2).tolist()
    texts = [{"id": f"t{i}", "text": t} for i, t in enumerate(TEXTS)]
    lazy = BackgroundServer(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "lazy",
        redis_url=redis_url,
        redis_prefix=redis_prefix + "lazy:",
        model_preload=False,
    )
    try:
        assert not lazy.running.embedder.loaded
        with Client(lazy.address, timeout=120) as other:
            ranked = []
            for c in (client, other):
                c.ingest("pool", vector_records(x))
                ranked.append([(r.id, r.score) for r in c.select("pool", y, k=60)[0]])
            assert ranked[1] == ranked[0]
            assert not lazy.running.embedder.loaded, "precomputed embeddings need no encoder"
            ranked = []
            for c in (client, other):
                c.ingest("texts", texts)
                ranked.append([(r.id, r.score) for r in c.select("texts", ["a cat on a mat"], k=3)[0]])
            assert ranked[1] == ranked[0]
            assert lazy.running.embedder.loaded
    finally:
        lazy.stop()
