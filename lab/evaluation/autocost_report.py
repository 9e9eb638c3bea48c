"""Tables of docs/evaluation.md's "Validated cost" section, from ``gotd eval`` results.

Reads the ``results.json`` of runs that included ``gotd-auto`` and the fixed settings of its grid
(:mod:`gotd.lab.evaluation.autocost`) and prints, per corpus, at one k:

- every fixed setting, the validated cost (``gotd-auto``), the server's former fixed default and the
  baselines: precision, perplexity and equal-token perplexity, mean ± standard error (across seeds
  when there are several, else across labels);
- the hindsight-best fixed setting of the corpus and the per-task best, how often the validation picked
  each, and what the validation would have reached with another criterion (mean reciprocal rank, AUC)
  on the same tasks: every setting's scores are in ``gotd-auto``'s diagnostics, so no rerun is needed.

Run: ``python -m gotd.lab.evaluation.autocost_report RESULTS.json [...]`` (one file per corpus).

With ``--merge OUT_DIR NAME BASE EXTRA [OLD=NEW ...]``, the rows of a second run on the same tasks (same
corpus, seeds and sizes) join a first run's: methods of the first run renamed ``OLD`` -> ``NEW`` (a
method whose code changed name between the runs), rows of the second run replacing any with the same
method, label, seed and k (the equal-token budget of each task must be the same in both runs: include
the method that sets it, DSIR, in the second run); the report ``OUT_DIR/NAME.md`` (and its results and
plots) is written again from the merged rows, with both commands recorded.

With ``--threshold``, the files are runs of ``gotd-auto-always`` (the validation without its
small-target fallback) and the fallback setting at several target-set sizes: one line per corpus and
size, the paired precision gain of validating over the fallback. The fallback threshold belongs where
that gain stops being positive.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from gotd.lab.evaluation.autocost import grid_name
from gotd.lab.evaluation.report import write_report
from gotd.lab.evaluation.summary import summarise
from gotd.server.selection.validation import FALLBACK, FIXED_GRID

__all__ = ["corpus_tables", "main"]

GRID = [grid_name(s) for s in FIXED_GRID]
OTHERS = ("gotd-auto", "gotd-auto-argmax", "gotd-default", "dsir", "centroid", "tsds")
CRITERIA = {"held-out recall, best setting": 0, "mean reciprocal rank": 1, "AUC": 2}


def _mean_se(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) > 1:
        per = [np.mean([r[key] for r in rows if r["seed"] == s]) for s in seeds]
    else:
        per = [r[key] for r in rows]
    return float(np.mean(per)), float(np.std(per, ddof=1) / np.sqrt(len(per))) if len(per) > 1 else 0.0


def _pick(scores: dict[str, list[float]], criterion: int) -> str:
    """The setting a criterion picks (ties: recall -> MRR -> grid order, others -> grid order)."""

    def key(i: int) -> tuple[float, ...]:
        s = scores[GRID[i]]
        return (s[0], s[1], -i) if criterion == 0 else (s[criterion], -i)

    return GRID[max(range(len(GRID)), key=key)]


def corpus_tables(result: dict[str, Any], k_frac: float = 0.05) -> list[str]:
    """Markdown lines for one corpus's results."""
    rows = [r for r in result["rows"] if abs(r["k_frac"] - k_frac) < 1e-9]
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    prec = {(r["method"], r["label"], r["seed"]): r["precision"] for r in rows}
    tasks = sorted({(r["label"], r["seed"]) for r in by_method["gotd-auto"]})
    grid_means = {m: _mean_se(by_method[m], "precision")[0] for m in GRID if by_method[m]}
    best_fixed = max(grid_means, key=lambda m: grid_means[m])
    lines = [
        f"k = {k_frac:g}, {len(tasks)} tasks ({len({t[0] for t in tasks})} labels × "
        f"{len({t[1] for t in tasks})} seeds); hindsight-best fixed setting: `{best_fixed}`.",
        "",
        "| method | precision | ppl | ppl (equal tokens) |",
        "|---|---|---|---|",
    ]
    for method in [*OTHERS, *GRID]:
        if not by_method[method]:
            continue
        cells = [_mean_se(by_method[method], key) for key in ("precision", "ppl", "ppl_budget")]
        name = f"**`{method}`**" if method in ("gotd-auto", best_fixed) else f"`{method}`"
        lines.append(
            f"| {name} | {cells[0][0]:.3f} ± {cells[0][1]:.3f} | {cells[1][0]:.0f} ± {cells[1][1]:.0f} "
            f"| {cells[2][0]:.0f} ± {cells[2][1]:.0f} |"
        )
    gap = [
        {"seed": t[1], "d": prec[("gotd-auto", *t)] - prec[(best_fixed, *t)]}
        for t in tasks
        if (best_fixed, *t) in prec
    ]
    if gap:
        d, se = _mean_se(gap, "d")
        lines += [
            "",
            f"`gotd-auto` − `{best_fixed}` (paired over the same tasks): {d:+.3f} ± {se:.3f} precision.",
        ]
    diag = {(r["label"], r["seed"]): r["diagnostics"] for r in by_method["gotd-auto"]}
    lines += ["", "| criterion | precision reached | picks the corpus's best fixed | picks a per-task best |"]
    lines.append("|---|---|---|---|")
    criteria: dict[str, list[str]] = {
        "held-out recall, one-standard-error rule (`gotd-auto`)": [diag[t]["chosen"] for t in tasks]
    }
    for name, index in CRITERIA.items():
        criteria[name] = [_pick(diag[t]["scores"], index) for t in tasks if diag[t].get("scores")]
    for name, picks in criteria.items():
        reached = [prec[(p, *t)] for p, t in zip(picks, tasks, strict=True)]
        per_task_best = [max(prec[(m, *t)] for m in GRID) for t in tasks]
        hits = sum(p == best_fixed for p in picks)
        task_hits = sum(prec[(p, *t)] >= b for p, t, b in zip(picks, tasks, per_task_best, strict=True))
        lines.append(f"| {name} | {np.mean(reached):.3f} | {hits}/{len(picks)} | {task_hits}/{len(picks)} |")
    chosen: dict[str, int] = defaultdict(int)
    for t in tasks:
        chosen[diag[t]["chosen"]] += 1
    counts = sorted(chosen.items(), key=lambda item: -item[1])
    seconds = [diag[t]["validate_seconds"] for t in tasks]
    lines += [
        "",
        "Settings chosen: " + ", ".join(f"`{m}` × {c}" for m, c in counts) + ".",
        f"Validation time per task: median {np.median(seconds):.2f} s.",
    ]
    return lines


THRESHOLD_METHODS = ("gotd-auto-always", "gotd-auto-argmax-always")


def threshold_lines(results: list[dict[str, Any]], k_frac: float = 0.05) -> list[str]:
    """Markdown table: validating (no fallback) vs the fallback setting, per corpus and target-set size.

    One column per validating method present (:data:`THRESHOLD_METHODS`): its precision and its gain
    over the fallback setting, paired task by task. Runs of the same corpus and size pool their rows
    (the same tasks: the methods may come from separate runs).
    """
    fallback = grid_name(FALLBACK)
    present = [m for m in THRESHOLD_METHODS if any(r["method"] == m for res in results for r in res["rows"])]
    lines = [
        f"| corpus | targets | `{fallback}` (fallback) | "
        + " | ".join(f"`{m}` | gain" for m in present)
        + " |",
        "|---|---|---|" + "---|---|" * len(present),
    ]
    pooled: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)  # runs of one size join
    for result in results:
        pooled[(result["settings"]["corpus_key"], result["settings"]["target_size"])] += result["rows"]
    for (corpus, size), every in sorted(pooled.items()):
        rows = [r for r in every if abs(r["k_frac"] - k_frac) < 1e-9]
        prec = {(r["method"], r["label"], r["seed"]): r["precision"] for r in rows}
        tasks = sorted({(r["label"], r["seed"]) for r in rows})
        fixed = [{"seed": t[1], "p": prec[(fallback, *t)]} for t in tasks]
        m, se = _mean_se(fixed, "p")
        cells = [f"{m:.3f} ± {se:.3f}"]
        for method in present:
            if not all((method, *t) in prec for t in tasks):
                cells += ["", ""]
                continue
            auto = [{"seed": t[1], "p": prec[(method, *t)]} for t in tasks]
            gain = [{"seed": a["seed"], "p": a["p"] - f["p"]} for a, f in zip(auto, fixed, strict=True)]
            (am, ase), (gm, gse) = _mean_se(auto, "p"), _mean_se(gain, "p")
            cells += [f"{am:.3f} ± {ase:.3f}", f"{gm:+.3f} ± {gse:.3f}"]
        lines.append(f"| {corpus} | {size} | " + " | ".join(cells) + " |")
    return lines


def merge_results(base: dict[str, Any], extra: dict[str, Any], rename: dict[str, str]) -> dict[str, Any]:
    """``base`` with ``extra``'s rows (see the module docstring); refuses runs of different tasks."""
    keys = ("corpus_key", "pool_size", "target_size", "heldout_size", "pool_fraction", "seeds", "topics")
    if any(base["settings"].get(k) != extra["settings"].get(k) for k in keys):
        raise ValueError("the two runs are not of the same tasks")

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["method"], r["label"], r["seed"], r["k_frac"])

    budgets = {(r["label"], r["seed"], r["k_frac"]): r.get("budget") for r in base["rows"]}
    if any(budgets.get((r["label"], r["seed"], r["k_frac"])) != r.get("budget") for r in extra["rows"]):
        raise ValueError("the equal-token budgets differ: run the second time with the method setting them")
    rows = [{**r, "method": rename.get(r["method"], r["method"])} for r in base["rows"]]
    replaced = {key(r) for r in extra["rows"]}
    merged = [r for r in rows if key(r) not in replaced] + list(extra["rows"])
    settings = dict(base["settings"])
    settings["methods"] = list(dict.fromkeys(r["method"] for r in merged))
    settings["command"] = f"{base['settings'].get('command')} ; then {extra['settings'].get('command')}"
    settings["merged"] = {"renamed": rename}
    return {**base, "settings": settings, "rows": merged, "summary": summarise(merged)}


def main(argv: list[str] | None = None) -> None:
    """Print the tables of every results file named on the command line."""
    args = list(argv if argv is not None else sys.argv[1:])
    if args and args[0] == "--merge":
        out, name, base, extra, *pairs = args[1:]
        rename = dict(pair.split("=", 1) for pair in pairs)
        first, second = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (base, extra))
        write_report(Path(out), merge_results(first, second, rename), name=name)
        return
    if args and args[0] == "--threshold":
        loaded = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args[1:]]
        print("\n".join(threshold_lines(loaded)))
        return
    for path in args:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        print(f"### {result.get('corpus_key') or path}\n")
        print("\n".join(corpus_tables(result)) + "\n")


if __name__ == "__main__":
    main()
