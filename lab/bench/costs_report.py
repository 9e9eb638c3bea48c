"""The "Fused cost vs embedding cost" section of docs/benchmarks/service.md and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gotd.lab.bench.costs import COSTS, SPAN, SPANS, STORE_BATCH, TARGET_TOPICS

PHASES = (
    ("cold", "cold (first Select on the pool version)"),
    ("cached", "cached (named target set)"),
    ("cached_inline", "cached (inline text + embedding targets)"),
    ("steady", "steady (2nd target set, same pool version)"),
)


def _cell(r: dict[str, Any]) -> str:
    hit = ", hit" if r["cache_hit"] else ""
    return f"{r['s']:.3f} ({r['iterations']}{hit})"


def _times(scenarios: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| n × m (auto mode →) | Select | embedding s (iters) | fused s (iters) | fused / embedding |",
        "|---|---|---:|---:|---:|",
    ]
    for sc in scenarios:
        size = f"{sc['n']:,} × {sc['m']:,} ({sc['cold']['fused']['mode']})"
        for key, label in PHASES:
            emb, fused = sc[key]["embedding"], sc[key]["fused"]
            lines.append(
                f"| {size} | {label} | {_cell(emb)} | {_cell(fused)} | **{sc['ratios'][key]:.2f}×** |"
            )
    return lines


def _breakdown(scenarios: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| n × m | Select | cost | server total ms | targets ms | load ms | fused rows + other ms "
        "| solve ms | score ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scenarios:
        for key in ("cold", "cached_inline", "steady"):
            for cost in COSTS:
                r = sc[key][cost]
                lines.append(
                    f"| {sc['n']:,} × {sc['m']:,} | {key.replace('_', ' ')} | {cost} | {r['total_ms']:.0f} "
                    f"| {r['targets_ms']:.0f} | {r['load_ms']:.0f} | {r['other_ms']:.0f} "
                    f"| {r['solve_ms']:.0f} | {r['score_ms']:.0f} |"
                )
    return lines


def _rss(scenarios: list[dict[str, Any]]) -> list[str]:
    head = " | ".join(f"{sc['n']:,} × {sc['m']:,}: RSS (peak so far) MB" for sc in scenarios)
    lines = [f"| after | {head} |", "|---|" + "---:|" * len(scenarios)]
    for i, (phase, *_rest) in enumerate(scenarios[0]["rss"]):
        cells = " | ".join(f"{sc['rss'][i][1]:,.0f} ({sc['rss'][i][2]:,.0f})" for sc in scenarios)
        lines.append(f"| {phase} | {cells} |")
    return lines


def section(costs: dict[str, Any], name: str) -> list[str]:
    """Markdown lines of the cost comparison (``costs`` = :func:`gotd.lab.bench.costs.run`)."""
    scenarios: list[dict[str, Any]] = costs["scenarios"]
    store = costs["store_ingest"]
    autos = "; ".join(
        f"{sc['n']:,}: cost {a['cost']}, mode {a['mode']}, cache hit {a['cache_hit']}"
        for sc in scenarios
        for a in [sc["auto"]]
    )
    ingest = "; ".join(
        f"{sc['n']:,} records: " + " and ".join(f"{v:,.0f}" for v in sc["ingest_records_per_s"].values())
        for sc in scenarios
    )
    return [
        "",
        "## Fused cost vs embedding cost",
        "",
        "Same server, same run. Every record has a text AND a precomputed embedding (the server uses the "
        "embedding as given and stores the text's n-gram sketch; no encoder runs): 11 topics (the wiki "
        "corpus's), each a random unit direction that its records' embeddings scatter around (as above) "
        f"and a word source — a record's text is {SPANS[0]}–{SPANS[1]} spans of {SPAN} consecutive words of "
        f"its topic's wiki summaries ({SPANS[0] * SPAN}–{SPANS[1] * SPAN} words), so n-grams carry the "
        f"same topic signal as the embeddings. Targets: topics {TARGET_TOPICS[0]} (stored as a named "
        f"target set and sent inline as text + embedding records); a 2nd target set from topics "
        f"{TARGET_TOPICS[1]}. Each cost has its own pool of the same records, so both costs' first Select "
        "is the first on its pool version (pool load included). `mode=auto`, k = 5% of the pool, fused "
        "weight w = 0.5 (default). *cold*: nothing cached (fused: the pool's fused rows — 384 + 1024 "
        "dims — built in this request); *cached*: dual-cache hit, best of 3; *steady*: a different "
        "target set on the same pool version (fused rows already cached): solve + score only. Ratios "
        "are fused / embedding wall times of the client call, measured side by side.",
        "",
        *_times(scenarios),
        "",
        "Server-side time of the Selects (`Summary.timings`; *targets* = resolving the targets — inline "
        "target texts are sketched only when the cost needs them; *fused rows + other* = total − targets "
        "− load − solve − score: building the fused rows on a cold fused Select, else ranking and "
        "streaming):",
        "",
        *_breakdown(scenarios),
        "",
        f"Default cost `auto` on the fused pool, same named targets: {autos} (with text everywhere, auto "
        "validates the fused cost's weight and ε on the target set and selects with the chosen setting, "
        "whose cache entry it shares: [autocost.md](autocost.md)).",
        "",
        "### Ingest: sketching at ingest",
        "",
        f"`Store.upsert` of the same {int(store['records']):,} text + embedding records (median "
        f"{store['median_words']:.0f} words) in batches of {STORE_BATCH:,} (one durable LMDB "
        "transaction each), into a Store opened without and with `sketcher=tf_sparse`, best of "
        f"{int(store['rounds'])} rounds in alternating order:",
        "",
        "| Store | records/s |",
        "|---|---:|",
        f"| without sketcher (embedding only) | {store['plain_per_s']:,.0f} |",
        f"| with `sketcher=tf_sparse` (the server's) | {store['sketched_per_s']:,.0f} |",
        f"| **time with / without** | **{store['slowdown']:.1f}×** |",
        f"| `tf_sparse` alone over the same texts | {store['tf_sparse_per_s']:,.0f} |",
        "",
        f"Through the server (Ingest RPC, batches of {STORE_BATCH:,}, sketching on), records/s of the "
        f"two identical pools of each scenario: {ingest}.",
        "",
        "### Memory",
        "",
        "RSS of the benchmark process after each phase (the server runs in-process, so this includes the "
        "client's synthetic records: n × 384 float32 plus the texts; the server's pool cache holds 2 "
        "pools, so the earlier sections' pools leave it once both cost pools are loaded). Each scenario "
        "deletes its pools at the end.",
        "",
        *_rss(scenarios),
        "",
        f"![fused vs embedding cost]({name}-costs.png)",
        "",
    ]


def plot(path: Path, costs: dict[str, Any]) -> None:
    """Grouped bars per scenario: each Select phase, embedding vs fused (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios: list[dict[str, Any]] = costs["scenarios"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 3.8), squeeze=False)
    xs = np.arange(len(PHASES))
    for ax, sc in zip(axes[0], scenarios, strict=True):
        for offset, cost in ((-0.2, "embedding"), (0.2, "fused")):
            ax.bar(xs + offset, [sc[key][cost]["s"] for key, _ in PHASES], width=0.4, label=cost)
        for x, (key, _) in zip(xs, PHASES, strict=True):
            top = max(sc[key][c]["s"] for c in COSTS)
            ax.annotate(f"{sc['ratios'][key]:.2f}×", (x, top), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs, ["cold", "cached", "cached\ninline", "steady"])
        ax.set_yscale("log")
        ax.set_title(f"{sc['n']:,} × {sc['m']:,} ({sc['cold']['fused']['mode']})")
        ax.set_ylabel("Select wall time (s, log)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
