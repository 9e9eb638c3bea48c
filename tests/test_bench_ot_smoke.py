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
    assert result["rank_large"]["ranked"] == result["rank_large"]["n"] // 20
    assert all(row["plain"]["converged"] for row in result["eps"])
    # every ratio pairs two numbers measured in this run, and the report prints those ratios
    pot, ct, large = result["pot"], result["ctransform"], result["rank_large"]
    assert set(pot) >= {"ours_s", "exact_s", "knopp", "knopp64", "log"}
    for name in ("knopp", "knopp64", "log"):
        assert set(pot[name]) >= {"s", "iters", "marginal_error", "ratio", "exact_ratio", "overlap"}
        assert pot[name]["ratio"] == pytest.approx(pot[name]["s"] / pot["ours_s"])
        assert pot[name]["exact_ratio"] == pytest.approx(pot[name]["s"] / pot["exact_s"])
    assert ct["floor"] > 0
    assert ct["ratio"] == pytest.approx(ct["ours"] / ct["floor"])
    assert large["paper_ratio"] == pytest.approx(large["paper_s"] / large["s"])
    assert f"{pot['knopp']['ratio']:.1f}× faster" in report
    assert f"{ct['ratio']:.2f}× floor" in report
