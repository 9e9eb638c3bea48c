"""Ingest pipeline: embed through the cache, idempotent upsert, atomic batches, files with progress."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.errors import FailedPrecondition, InvalidArgument
from gotd.cache.records import Record
from gotd.cache.store.core import Store
from gotd.cache.store.embeddings import EmbeddingCache
from gotd.server.ingest.embedder import Embedder
from gotd.server.ingest.pipeline import Ingestor
from tests._store_helpers import model, unit_vectors

__all__ = ["model"]

TEXTS = ["Calculus studies change", "Bread needs flour and yeast", "Rivers flow to the sea"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "data") as s:
        yield s


@pytest.fixture
def ingestor(store: Store, model: Embedder) -> Ingestor:
    return Ingestor(store, model, EmbeddingCache(store))


def _text_records(texts: list[str] = TEXTS, prefix: str = "t") -> list[Record]:
    return [Record(id=f"{prefix}{i}", text=t, meta={"i": i}) for i, t in enumerate(texts)]


def test_text_ingest_embeds_once_and_reingest_changes_nothing(ingestor: Ingestor, model: Embedder) -> None:
    before = model.encoded
    first = ingestor.ingest_batch("p", _text_records())
    assert (first.inserted, first.embedded, first.version) == (3, 3, 1)
    again = ingestor.ingest_batch("p", _text_records())
    assert (again.unchanged, again.embedded, again.version) == (3, 0, 1)
    assert model.encoded == before + 3
    info = ingestor.store.get_pool("p")
    assert (info.model, info.dim, info.count, info.version) == (model.model_id, 384, 3, 1)
    np.testing.assert_allclose(ingestor.store.load_vectors("p").vectors, model.encode(TEXTS), atol=1e-5)


def test_changed_text_reembeds_only_that_record(ingestor: Ingestor, model: Embedder) -> None:
    ingestor.ingest_batch("p", _text_records())
    before = model.encoded
    changed = _text_records()
    changed[1] = Record(id="t1", text="Sourdough bread rises slowly", meta={"i": 1})
    result = ingestor.ingest_batch("p", changed)
    assert (result.updated, result.unchanged, result.embedded, result.version) == (1, 2, 1, 2)
    assert model.encoded == before + 1
    assert ingestor.store.load_vectors("p").row_versions.tolist() == [1, 2, 1]


def test_cache_shared_across_pools_and_stored_text_reused_without_cache(
    store: Store, ingestor: Ingestor, model: Embedder
) -> None:
    ingestor.ingest_batch("p", _text_records())
    before = model.encoded
    assert ingestor.ingest_batch("q", _text_records(prefix="q")).embedded == 0
    uncached = Ingestor(store, model, None)
    assert uncached.ingest_batch("p", _text_records()).unchanged == 3
    assert model.encoded == before, "the encoder was called for known texts"


def test_mixed_batch_and_precomputed_only_pools(ingestor: Ingestor, model: Embedder) -> None:
    x = unit_vectors(2, 384, seed=1)
    batch = [*_text_records(TEXTS[:1]), Record(id="v0", embedding=x[0]), Record(id="v1", embedding=x[1])]
    result = ingestor.ingest_batch("p", batch)
    assert (result.inserted, result.embedded) == (3, 1)
    np.testing.assert_array_equal(ingestor.store.load_vectors("p").vectors[1:], x)
    small = ingestor.ingest_batch("small", [Record(id="a", embedding=np.ones(8))])
    assert small.embedded == 0
    assert ingestor.store.get_pool("small").model == "external-8d"
    with pytest.raises(FailedPrecondition, match="'t0'"):
        ingestor.ingest_batch("small", _text_records())


@pytest.mark.parametrize(
    ("reason", "bad", "error", "names"),
    [
        ("wrong dimension", Record(id="w", embedding=np.ones(5)), FailedPrecondition, "'w'"),
        ("duplicate id", Record(id="t1", text="again"), InvalidArgument, "'t1'"),
    ],
)
def test_a_bad_record_writes_nothing_and_embeds_nothing(
    ingestor: Ingestor, model: Embedder, reason: str, bad: Record, error: type[Exception], names: str
) -> None:
    ingestor.ingest_batch("p", [Record(id="keep", embedding=unit_vectors(1, 384)[0])])
    before = model.encoded
    with pytest.raises(error, match=names):
        ingestor.ingest_batch("p", [*_text_records(["brand new text a", "brand new text b"]), bad])
    assert model.encoded == before
    assert ingestor.store.get_pool("p").count == 1
    with pytest.raises(InvalidArgument):
        ingestor.ingest_batch("../x", _text_records())
    with pytest.raises(InvalidArgument):
        ingestor.ingest_batch("p", [])


def test_ingest_file_with_progress(
    ingestor: Ingestor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = unit_vectors(25, 384, seed=4)
    path = tmp_path / "recs.jsonl"
    lines = [json.dumps({"id": f"f{i}", "embedding": x[i].tolist(), "domain": "d"}) for i in range(25)]
    path.write_text("\n".join(lines) + "\n")
    summary = ingestor.ingest_file("files", path, batch_size=10, progress=True)
    assert (summary.batches, summary.inserted, summary.version, summary.records) == (3, 25, 3, 25)
    assert "ingest files" in capsys.readouterr().err
    again = ingestor.ingest_file("files", path, batch_size=10, progress=False)
    assert (again.unchanged, again.version) == (25, 3)


def test_ingest_file_commits_batches_before_a_bad_line(ingestor: Ingestor, tmp_path: Path) -> None:
    x = unit_vectors(6, 384, seed=5)
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"id": f"f{i}", "embedding": x[i].tolist()}) for i in range(6)]
    lines[4] = '{"id": "f4", "embedding": [1, 2]}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FailedPrecondition, match="'f4'"):
        ingestor.ingest_file("files", path, batch_size=3, progress=False)
    assert ingestor.store.get_pool("files").count == 3
    path.write_bytes(b'{"id": "ok", "embedding": [1.0]}\n{"id": "x", "text": "caf\xe9"}\n')
    with pytest.raises(InvalidArgument, match=r"bad\.jsonl:2"):
        ingestor.ingest_file("other", path, batch_size=10, progress=False)
    assert [p.name for p in ingestor.store.list_pools()] == ["files"]


def test_ingest_file_embeds_a_window_in_one_encoder_call(
    ingestor: Ingestor, model: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    encode = model.encode

    def counting(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return encode(texts)

    monkeypatch.setattr(model, "encode", counting)
    texts = [f"window text number {i}" for i in range(7)]
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"w{i}", "text": t}) for i, t in enumerate(texts)) + "\n")
    summary = ingestor.ingest_file("win", path, batch_size=2, progress=False, embed_window=8)
    assert (summary.batches, summary.inserted, summary.embedded) == (4, 7, 7)
    assert calls == [7]
    again = ingestor.ingest_file("win", path, batch_size=2, progress=False, embed_window=8)
    assert (again.unchanged, again.embedded) == (7, 0)
    assert calls == [7]
    path.write_bytes(path.read_bytes() + b'{"id": "bad", "text": "\xff"}\n')
    with pytest.raises(InvalidArgument, match=r"w\.jsonl:8"):
        ingestor.ingest_file("win2", path, batch_size=2, progress=False, embed_window=100)
    assert ingestor.store.get_pool("win2").count == 6, "the three whole batches before the bad one"
