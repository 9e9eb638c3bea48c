"""``gotd bench ot --quick``: the harness runs end to end at smoke sizes and writes its report."""

from __future__ import annotations

from pathlib import Path

import pytest

from gotd.lab.bench.ot import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_quick_bench_writes_report_and_plots(tmp_path: Path) -> None:
    result = run(tmp_path, quick=True)
    report = (tmp_path / "ot.md").read_text()
    assert result["report"] == str(tmp_path / "ot.md")
    for name in result["plots"]:
        assert (tmp_path / name).stat().st_size > 1000
    for heading in ("sinkhorn_knopp", "GEMM+logsumexp floor", "peak RSS", "subsample", "against eps"):
        assert heading in report
    assert result["pot"]["knopp"]["overlap"] >= 0.9
    assert result["ctransform"]["ratio"] > 0
    assert result["rank_large"]["ranked"] == result["rank_large"]["n"] // 20
    assert all(row["plain"]["converged"] for row in result["eps"])
