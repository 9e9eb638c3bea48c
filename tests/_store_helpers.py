"""Helpers of the store, index and ingest tests: deterministic unit vectors and records."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.records import Record
from gotd.cache.store.core import PoolArrays, Store
from gotd.server.ingest.embedder import Embedder


def unit_vectors(n: int, dim: int = 32, *, seed: int = 0) -> np.ndarray:
    """``n`` random unit rows (float32), the same for the same seed."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vector_records(
    vectors: np.ndarray, *, prefix: str = "r", start: int = 0, domains: int = 0, text: bool = False
) -> list[Record]:
    """Records ``{prefix}{i}`` with the given embeddings (and optional domains and texts)."""
    return [
        Record(
            id=f"{prefix}{start + i}",
            text=f"text {start + i}" if text else None,
            embedding=v,
            domain=f"d{(start + i) % domains}" if domains else "",
            meta={"n": start + i},
        )
        for i, v in enumerate(vectors)
    ]


def open_store(path: Path, **kwargs: object) -> Store:
    return Store(path, **kwargs)  # type: ignore[arg-type]


CHILD_INGEST = r"""
import sys
import numpy as np
from pathlib import Path
from gotd.cache.records import Record
from gotd.cache.store.core import PoolArrays, Store

data_dir = sys.argv[1]
batches, batch, dim, map_size = (int(a) for a in sys.argv[2:6])
store = Store(Path(data_dir), map_size=map_size)
for b in range(batches):
    rng = np.random.default_rng(b)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    records = [Record(id=f"b{b}-{i}", embedding=x[i], domain=f"d{b}") for i in range(batch)]
    result = store.upsert("crash", records, model="m", dim=dim, vectors=x)
    print(f"ack {b} {result.version}", flush=True)
print("done", flush=True)
"""


def batch_vectors(b: int, batch: int, dim: int) -> np.ndarray:
    """The vectors the crash child writes in batch ``b`` (before normalisation)."""
    return np.random.default_rng(b).standard_normal((batch, dim)).astype(np.float32)


@functools.cache
def shared_embedder() -> Embedder:
    """The real default model, loaded once per process (used when conftest's fixture is absent)."""
    return Embedder()


@pytest.fixture
def model(request: pytest.FixtureRequest) -> Embedder:
    """conftest's session ``embedder`` when present, else one loaded here (same model)."""
    try:
        found: Embedder = request.getfixturevalue("embedder")
    except pytest.FixtureLookupError:
        return shared_embedder()
    return found


def dense_sketches(arrays: PoolArrays) -> np.ndarray | None:
    """A snapshot's sketch rows as the dense float16 array (it keeps them sparse), None without them."""
    return None if arrays.sketches is None else arrays.sketches.dense()
