"""Fixtures of the reliability suite: per-test figures written to build/reliability/*.json."""

from __future__ import annotations

import inspect
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability.support import FIGURES_DIR


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@pytest.fixture(autouse=True)
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its measured figures; saved as JSON with the test's docstring."""
    data: dict[str, Any] = {}
    started = time.perf_counter()
    yield data
    doc = inspect.getdoc(getattr(request.node, "function", None)) or ""
    nodeid = request.node.nodeid
    entry = {
        "nodeid": nodeid,
        "name": request.node.name,
        "module": request.node.module.__name__.rsplit(".", 1)[-1] if request.node.module else "",
        "doc": doc.split("\n\n", 1)[0].replace("\n", " "),
        "markers": sorted({m.name for m in request.node.iter_markers()}),
        "seconds": round(time.perf_counter() - started, 2),
        "figures": _clean(data),
    }
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("tests/reliability/", 1)[-1])
    (FIGURES_DIR / f"{stem}.json").write_text(json.dumps(entry, indent=1, default=str))
