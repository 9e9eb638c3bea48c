"""`gotd bench nearcopy --quick`: the harness runs end to end and writes its report (no timing checks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gotd.lab.bench.nearcopy import faiss_walk, pool_with_copies, run
from gotd.server.selection.nearcopy import distinct_top_k


def test_faiss_walk_equals_the_gemm_walk() -> None:
    x = pool_with_copies(2000)
    scores = -(x @ x[0]).astype(np.float32)
    walk = distinct_top_k(scores, 300, vectors=x, cosine=0.95)
    assert len(walk.skipped) > 0
    assert [r for r, _ in walk.taken] == faiss_walk(scores, 300, x, 0.95)


def test_quick_nearcopy_bench_writes_report(tmp_path: Path) -> None:
    report = run(tmp_path, quick=True)
    s = report["service"]
    assert s["cold"]["cache_hit"] is False
    assert s["cached"]["cache_hit"] is True
    assert s["new_exclusion"]["cache_hit"] is True
    assert s["cached"]["skipped"] > 0
    assert s["cold"]["returned"] == s["k"]
    text = (tmp_path / "nearcopy-smoke.md").read_text()
    assert "FAISS" in text
    assert "skipping on" in text
