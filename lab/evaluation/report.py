"""The evaluation report: Markdown tables, auto-computed findings and PNG plots (matplotlib, Agg).

Writes ``<out_dir>/evaluation.md`` and, beside it, ``<out_dir>/evaluation/`` with ``results.json``
(every row, settings and environment), ``quality.png`` (metrics against k per method) and ``time.png``
(selection time per method, embedding time separately).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gotd.lab.bench.util import cpu_model, memory_gib
from gotd.lab.corpora.registry import corpus_caveat
from gotd.lab.evaluation.findings import findings
from gotd.lab.evaluation.summary import label_means

__all__ = ["METHOD_NOTES", "environment", "write_report"]

#: One line per built-in method for the report; unknown (plugged-in) methods are listed by name.
METHOD_NOTES = {
    "gotd-global": "GOT-D, `global` mode: target potential from a pool summary, every candidate scored by "
    "the c-transform (calibrated OT gradient).",
    "gotd-global-1k": "GOT-D, `global` mode with a 1,000-row summary (the hash subsample used when the "
    "pool is larger than the summary; the default summary of 4,096 rows covers a 3,000-row pool whole).",
    "gotd-exact": "GOT-D, `exact` mode: full Sinkhorn between the whole pool and the targets.",
    "gotd-paper": "GOT-D, `paper` mode: OT to each k-means cluster of the pool (domains from clustering, "
    "never labels), exact solve on the 2 closest clusters, ranking only their rows; when those hold "
    "fewer than k rows, solved again with one more cluster until they do.",
    "dsir": "DSIR (data-selection package): hashed uni+bigram importance weights, importance resampling "
    "(Gumbel top-k, seeded) as in the package's default `resample`; `min_example_length=1`, "
    "`tokenizer='wordpunct'` (a regex: no nltk data), 10,000 buckets, weights fitted on all tokens. "
    "Log weights are sums over a text's n-grams, so DSIR favours short texts.",
    "dsir-topk": "DSIR, same weights, deterministic top-k (`resample(top_k=True)`).",
    "centroid": "Cosine similarity to the normalised mean target embedding.",
    "random": "Uniform random permutation (seeded).",
}
ONE_SEED = (
    "- One task per label and one seed: a difference of a hundredth in mean precision is within the "
    "noise of the task draw; the per-topic better/tied/worse counts say more than the means."
)
SEEDS = (
    "- {n} seeds, one task per label and seed: ± is the standard error across seeds of the per-seed "
    "mean over labels (the noise of the task draw, not the spread between labels); per-topic numbers and "
    "better/tied/worse counts use each label's mean over the seeds."
)
CAVEATS = (
    "- The bigram perplexity is a cheap proxy for warming up fine-tuning, not a fine-tuning run; it "
    "rewards vocabulary overlap with the held-out texts and falls with the number of tokens selected, "
    "hence the equal-token column (whose budget is the smallest selection, usually DSIR's).",
    "- Selection times come from a 2-core machine shared with other jobs; each is the fastest of the "
    "repeats, still noisy at the tenth-of-a-second scale. Embedding time is separate and dominates.",
)
PACKAGES = ("torch", "numpy", "pot", "data-selection", "sentence-transformers", "nltk", "matplotlib")
METRICS = (
    ("precision", "precision", "{:.3f}"),
    ("ceiling", "ceiling", "{:.3f}"),
    ("distinct_precision", "distinct precision", "{:.3f}"),
    ("redundancy", "redundancy", "{:.3f}"),
    ("ppl", "ppl (size k)", "{:.0f}"),
    ("ppl_budget", "ppl (equal tokens)", "{:.0f}"),
    ("ot", "OT to held-out", "{:.4f}"),
    ("tokens", "tokens", "{:.0f}"),
    ("overlap_exact", "overlap w/ exact", "{:.3f}"),
    ("seconds", "select s/task (mean)", "{:.2f}"),
)
#: Metrics shown as mean ± standard error across seeds (when a run has several).
WITH_SE = ("precision", "distinct_precision", "ppl", "ppl_budget")


def environment() -> dict[str, Any]:
    """Machine, versions and code revision of this run."""
    cpu, mem_gb = cpu_model(), memory_gib()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "packages": versions,
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_report(
    out_dir: Path, result: dict[str, Any], *, plots: bool = True, name: str = "evaluation"
) -> Path:
    """Write ``<name>.md``, ``<name>/results.json`` and (with ``plots``) the PNGs; returns the .md path."""
    assets = out_dir / name
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    images = _plots(assets, result) if plots else []
    path = out_dir / f"{name}.md"
    path.write_text(_markdown(result, [p.relative_to(out_dir) for p in images], name), encoding="utf-8")
    return path


# -- markdown -------------------------------------------------------------------------------------


def _fmt(template: str, value: Any) -> str:
    v = float(value)
    return "–" if math.isnan(v) else template.format(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _pct(frac: float) -> str:
    return f"{100 * frac:g}%"


def _cell(entry: dict[str, Any], key: str, template: str) -> str:
    """A summary cell: the mean, with ``± se`` when the entry has a finite standard error for ``key``."""
    text = _fmt(template, entry[key])
    se = float(entry.get(f"{key}_se", math.nan))
    if key in WITH_SE and not math.isnan(se) and text != "–":
        text += " ± " + template.format(se)
    return text


def _stress_text(near: Sequence[float]) -> str:
    frac, copies = near
    return (
        f"- **Near-copy stress**: {100 * frac:g}% of the corpus texts (by id hash, the same in every task) "
        f"get {int(copies)} near-copies each in any pool that holds them (in turn: exact copy, re-cased, a "
        "boilerplate line appended, one word dropped; copies keep their source's label), shuffled in; "
        "k is a share of the clean pool. `distinct precision` = distinct texts of the label in the top k "
        "/ k; `redundancy` = share of the top k repeating a text already selected."
    )


def _seeds_text(s: dict[str, Any]) -> str:
    seeds = s.get("seeds") or [s["seed"]]
    head = f"Seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return head + " (each label's draw uses `[seed, xxh3_64(label)]`; the seed also seeds the methods)."


def _markdown(result: dict[str, Any], images: Sequence[Path], name: str) -> str:
    s, env, emb = result["settings"], result["environment"], result["embedding"]
    summary, rows = result["summary"], result["rows"]
    methods, ks = s["methods"], s["ks"]
    n_seeds = len(s.get("seeds") or [s["seed"]])
    topic_rows = label_means(rows)
    out = [
        "# Selection quality: GOT-D against DSIR and baselines",
        "",
        "Generated by `gotd.lab.evaluation.run.run` (issue 7). Every number below comes from one run"
        + (f", reproduced by `{s['command']}`." if s.get("command") else "."),
        f"Raw rows (per task, method and k) are in `{name}/results.json`.",
        "",
        "## Setup",
        "",
        f"- **Corpus**: {s.get('corpus', 'unnamed')}, {s.get('corpus_size', '?')} texts.",
        f"- **Tasks**: one per label{' and seed' if n_seeds > 1 else ''} "
        f"({len(s['topics'])} labels: {', '.join(s['topics'])}). Target set = "
        f"{s['target_size']} texts of the label; held-out = {s['heldout_size']} other texts of the label; "
        f"pool = {s['pool_size']} texts with {100 * s['pool_fraction']:g}% of the label where enough remain "
        "(the rest drawn uniformly from the other labels), shuffled. Target, held-out and pool are "
        f"disjoint. {_seeds_text(s)}",
        "- **Label texts in the pool**: "
        + ", ".join(f"{k} {v}" for k, v in s["positives"].items())
        + ". `ceiling` = best reachable precision, min(1, positives / k).",
        f"- **k** = {', '.join(_pct(k) for k in ks)} of the pool; ε = {s['eps']:g} for the OT methods and "
        "for the OT-distance metric (squared Euclidean cost on unit embeddings).",
        *(
            [
                "- **GOT-D solver settings** (`SelectionConfig` defaults; seed = run seed): "
                + ", ".join(f"`{k}={v}`" for k, v in s["selection_config"].items())
                + "."
            ]
            if s.get("selection_config")
            else []
        ),
        f"- **Embeddings**: {emb['model_id']}, "
        + (
            f"{emb['texts']} texts encoded once in {emb['encode_seconds']:.0f} s "
            f"({emb['texts'] / max(emb['encode_seconds'], 1e-9):.1f} texts/s) and cached; "
            if emb.get("texts")
            else "given with the corpus; "
        )
        + f"this run {'loaded' if emb.get('cached', True) else 'loaded or encoded'} them in "
        + f"{emb['load_seconds']:.2f} s. Selection times below exclude embedding.",
        *([_stress_text(s["near_copies"])] if s.get("near_copies") else []),
        "- **Methods** (none sees a label; each gets pool and target texts and embeddings):",
        *[f"  - `{m}`: {METHOD_NOTES.get(m, 'plugged-in method')}" for m in methods],
        "- **Metrics**: `precision` = share of the top k with the target label; `OT to held-out` = entropic "
        "OT cost ⟨a,f⟩+⟨b,g⟩ (gotd's Sinkhorn, tol 1e-4) between the selected and the held-out embeddings; "
        "`ppl` = perplexity on the held-out texts of an interpolated Kneser-Ney bigram model (discount "
        "0.75 at both orders, interpolated to a uniform distribution over the task vocabulary: words of "
        "pool and held-out plus `</s>`; lower-cased word-punct tokens) trained on the selected texts; "
        "`ppl (equal tokens)` = the same with every method's selection cut, in rank order, to the fewest "
        "tokens any method selected at that k; `tokens` selected; `overlap w/ exact` = share of the top k "
        "also in `gotd-exact`'s top k; `select s/task` = wall time of one ranking (embeddings cached; "
        f"fastest of {s.get('repeats', 1)} runs per task, which all returned the same ranking).",
        f"- **Machine**: {env['cpu']}, {env['cores']} cores (shared with other jobs: times are noisy), "
        f"{env['memory_gb']} GB; {env['platform']}; Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        + f"; gotd commit {env['commit']}; {env['date']}; total wall time {result['seconds']:.0f} s.",
        "",
        "## Findings",
        "",
        *findings(summary, rows, methods, ks),
        "",
        "## Caveats",
        "",
        ONE_SEED if n_seeds == 1 else SEEDS.format(n=n_seeds),
        *CAVEATS[:1],
        corpus_caveat(s.get("corpus_key", "wiki")),
        *CAVEATS[1:],
        "",
    ]
    out += [f"![{p.stem}]({p.as_posix()})" for p in images] + [""]
    for k in ks:
        means = [e for e in summary if e["k_frac"] == k]
        head = f"Mean over {means[0]['tasks'] if means else 0} tasks" + (
            f" ({len(s['topics'])} labels × {n_seeds} seeds; ± = standard error across seeds):"
            if n_seeds > 1
            else ":"
        )
        out += [f"## k = {_pct(k)} of the pool", "", head, ""]
        out += _table(
            ["method", *[label for _, label, _ in METRICS]],
            [[f"`{e['method']}`", *[_cell(e, key, t) for key, _, t in METRICS]] for e in means],
        )
        out += [""]
        named = {m[0]: m for m in METRICS}
        for key, label, template in (named[n] for n in ("precision", "ppl_budget", "ppl", "ot")):
            over = f" (mean over {n_seeds} seeds)" if n_seeds > 1 else ""
            out += [f"<details><summary>Per topic{over}: {label}, k = {_pct(k)}</summary>", ""]
            out += _per_topic(topic_rows, methods, s["topics"], k, key, template)
            out += ["", "</details>", ""]
    return "\n".join(out) + "\n"


def _per_topic(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    topics: Sequence[str],
    k: float,
    key: str,
    tpl: str,
) -> list[str]:
    cell = {(r["label"], r["method"]): r[key] for r in rows if r["k_frac"] == k}
    body = [[t, *[_fmt(tpl, cell.get((t, m), math.nan)) for m in methods]] for t in topics]
    means = [sum(float(cell[t, m]) for t in topics) / len(topics) for m in methods]
    body.append(["**mean**", *[_fmt(tpl, v) for v in means]])
    return _table(["topic", *[f"`{m}`" for m in methods]], body)


# -- plots ----------------------------------------------------------------------------------------


def _plots(assets: Path, result: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, summary = result["settings"], result["summary"]
    methods, ks = s["methods"], s["ks"]
    panels = [
        ("precision", "target-label precision"),
        ("ppl", "held-out perplexity (size k)"),
        ("ppl_budget", "held-out perplexity (equal tokens)"),
        ("ot", "OT cost to held-out"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for i, m in enumerate(methods):
            pts = sorted(
                (e["k_frac"], e[key], e.get(f"{key}_se", math.nan)) for e in summary if e["method"] == m
            )
            style = {"marker": "osD^vPX*"[i % 8], "linestyle": ("-", "--", ":", "-.")[i % 4], "alpha": 0.85}
            errs = [float(se) for _, _, se in pts]
            yerr = None if all(math.isnan(e) for e in errs) else errs
            ax.errorbar(
                [100 * k for k, _, _ in pts], [v for _, v, _ in pts], yerr=yerr, capsize=3, label=m, **style
            )
        ax.set_title(title)
        ax.set_xlabel("k (% of pool)")
        ax.set_xticks([100 * k for k in ks])
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(methods), 7), fontsize=8)
    n_seeds = len(s.get("seeds") or [s["seed"]])
    over = (
        f"{len(s['topics'])} labels × {n_seeds} seeds, bars ± se"
        if n_seeds > 1
        else f"{len(s['topics'])} tasks"
    )
    fig.suptitle(f"Selection quality, mean over {over} (pool {s['pool_size']})")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    quality = assets / "quality.png"
    fig.savefig(quality, dpi=90)
    plt.close(fig)

    per_task = {
        m: [r["seconds"] for r in result["rows"] if r["method"] == m and r["k_frac"] == ks[0]]
        for m in methods
    }
    names = list(methods)
    values = [sum(v) / len(v) for v in per_task.values()]
    emb = result["embedding"]
    if emb.get("texts"):
        rate = emb["encode_seconds"] / emb["texts"]
        names.append("embed pool+target\n(estimated)")
        values.append(rate * (s["pool_size"] + s["target_size"]))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bars = ax.bar(
        range(len(names)), values, color=["C0"] * len(methods) + ["C7"] * (len(names) - len(methods))
    )
    ax.bar_label(bars, labels=[f"{v:.3g} s" for v in values], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per task (mean, log)")
    ax.set_title("Selection wall time per task (embeddings cached); grey: embedding, for scale")
    fig.tight_layout()
    timing = assets / "time.png"
    fig.savefig(timing, dpi=90)
    plt.close(fig)
    return [quality, timing]
