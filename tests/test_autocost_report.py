"""The validated cost's report tables (docs/evaluation.md) from hand-made results."""

from __future__ import annotations

from typing import Any

import pytest

from gotd.lab.evaluation.autocost import grid_name
from gotd.lab.evaluation.autocost_report import GRID, corpus_tables, merge_results, threshold_lines
from gotd.server.selection.validation import FALLBACK


def _row(method: str, label: str, seed: int, precision: float, **extra: Any) -> dict[str, Any]:
    row = {"method": method, "label": label, "seed": seed, "k_frac": 0.05, "precision": precision}
    return {**row, "ot_converged": True, **extra}


def test_threshold_table_pairs_the_tasks() -> None:
    rows = []
    for seed in (0, 1):
        for label, auto, fixed in (("a", 0.6, 0.5), ("b", 0.4, 0.4)):
            rows += [
                _row("gotd-auto-always", label, seed, auto),
                _row(grid_name(FALLBACK), label, seed, fixed),
            ]
    result = {"settings": {"corpus_key": "toy", "target_size": 20}, "rows": rows}
    table = threshold_lines([result])
    assert table[2] == "| toy | 20 | 0.450 ± 0.000 | 0.500 ± 0.000 | +0.050 ± 0.000 |"


def test_corpus_table_names_the_best_fixed_setting_and_the_gap() -> None:
    rows = []
    for seed in (0, 1, 2):
        for i, method in enumerate(GRID):
            rows.append(_row(method, "a", seed, 0.1 + 0.01 * i, ppl=100.0, ppl_budget=110.0))
        scores = {m: [0.5 if m == GRID[-1] else 0.1, 0.1, 0.5] for m in GRID}
        diagnostics = {"chosen": GRID[-1], "scores": scores, "validate_seconds": 0.5}
        rows.append(
            _row(
                "gotd-auto",
                "a",
                seed,
                0.1 + 0.01 * (len(GRID) - 1) - 0.003 * seed,
                ppl=99.0,
                ppl_budget=109.0,
                diagnostics=diagnostics,
            )
        )
    lines = corpus_tables({"rows": rows})
    assert f"hindsight-best fixed setting: `{GRID[-1]}`" in lines[0]
    gap = next(line for line in lines if line.startswith("`gotd-auto` −"))
    assert gap.startswith(f"`gotd-auto` − `{GRID[-1]}` (paired over the same tasks): -0.003 ± 0.002")
    cells = [line.split(" | ") for line in lines if line.startswith("| held-out")]
    reached = {c[0][2:]: c[1] for c in cells}
    assert reached == {
        "held-out recall, one-standard-error rule (`gotd-auto`)": "0.210",
        "held-out recall, best setting": "0.210",
    }
    assert any(line.startswith("| AUC | 0.100 |") for line in lines)  # every AUC tied: grid order


def test_merge_renames_the_first_run_and_takes_the_second_runs_rows() -> None:
    settings = {"corpus_key": "toy", "pool_size": 10, "target_size": 5, "seeds": [0], "command": "a"}
    base = {"settings": settings, "rows": [_row("gotd-auto", "a", 0, 0.5), _row("dsir", "a", 0, 0.2)]}
    extra = {"settings": {**settings, "command": "b"}, "rows": [_row("gotd-auto", "a", 0, 0.6)]}
    merged = merge_results(base, extra, {"gotd-auto": "gotd-auto-argmax"})
    got = {(r["method"], r["precision"]) for r in merged["rows"]}
    assert got == {("gotd-auto-argmax", 0.5), ("dsir", 0.2), ("gotd-auto", 0.6)}
    assert merged["settings"]["command"] == "a ; then b"
    with pytest.raises(ValueError, match="same tasks"):
        merge_results(base, {**extra, "settings": {**settings, "pool_size": 11}}, {})
    other_budget = {**extra, "rows": [_row("gotd-auto", "a", 0, 0.6, budget=7)]}
    with pytest.raises(ValueError, match="budgets differ"):
        merge_results(base, other_budget, {})
