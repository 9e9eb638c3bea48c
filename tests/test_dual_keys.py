"""cache_key: deterministic, sorted, readable, short and Redis-safe keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gotd.cache.duals.cache import cache_key, render_part


def test_cache_key_is_deterministic_sorted_and_readable() -> None:
    key = cache_key(pool="wiki", eps=0.1, mode="global", max_iter=1000, code=3)
    assert key == "code=3:eps=0.1:max_iter=1000:mode=global:pool=wiki"
    assert key == cache_key(code=3, mode="global", pool="wiki", max_iter=1000, eps=0.1)
    numpy_int: Any = np.int64(7)  # numpy scalars are accepted at run time
    assert cache_key(code="v1", eps=1e-05, ok=True, x=np.float64(0.1), n=numpy_int) == (
        "code=v1:eps=1e-05:n=7:ok=true:x=0.1"
    )
    assert cache_key(code=1, eps=0.1) != cache_key(code=2, eps=0.1)
    assert cache_key(code=1, eps=0.1) != cache_key(code=1, eps=0.2)


def test_cache_key_hashes_long_or_unsafe_parts() -> None:
    long_hash = "f" * 64
    key = cache_key(code=1, target=long_hash, pool="my pool: *x*", model="sentence-transformers/all-MiniLM")
    parts = dict(p.split("=", 1) for p in key.split(":"))
    assert parts["target"].startswith("#")
    assert len(parts["target"]) == 17
    assert parts["pool"].startswith("#")
    assert len(parts["pool"]) == 17
    assert parts["model"] == "sentence-transformers/all-MiniLM"
    assert key == cache_key(
        code=1, target=long_hash, pool="my pool: *x*", model="sentence-transformers/all-MiniLM"
    )
    assert all(c not in key for c in " *?[]\n")
    assert render_part("my pool: *x*") == parts["pool"]


@pytest.mark.parametrize(
    ("parts", "error"),
    [({"eps": 0.1}, ValueError), ({"code": 1, "Bad": 1}, ValueError), ({"code": 1, "x": [1]}, TypeError)],
)
def test_cache_key_rejects_bad_parts(parts: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        cache_key(**parts)
