"""Report of ``gotd bench scale``: docs/benchmarks/scale.md, scale.json and scale.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GIB = 2**30


def _gib(b: float) -> str:
    return f"{b / GIB:.2f}"


def _row(r: dict[str, Any], cost: str) -> str:
    cold, cached = r[cost]["cold"], r[cost]["cached"]
    t = cold["timings_ms"]
    per = t.get("score", 0.0) * 1e6 / r["n"]  # ns per candidate of the scoring pass
    return (
        f"| {r['n']:,} | {cost} | {cold['seconds']:.1f} | {t.get('load', 0) / 1e3:.1f} | "
        f"{t.get('solve', 0) / 1e3:.1f} | {t.get('score', 0) / 1e3:.1f} | {cached['seconds']:.2f} | "
        f"{per:.0f} | {cold['seconds'] * 1e9 / r['n']:.0f} | {_gib(r['stored_bytes'])} | "
        f"{_gib(cold['rss_peak'])} | {cold['rss_peak'] / r['stored_bytes']:.2f} |"
    )


def _plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ns = [r["n"] / 1e6 for r in sizes]
    a.plot(ns, [r["embedding"]["cold"]["seconds"] * 1e9 / r["n"] for r in sizes], "o-", label="cold Select")
    a.plot(
        ns,
        [r["embedding"]["cold"]["timings_ms"].get("score", 0) * 1e6 / r["n"] for r in sizes],
        "s-",
        label="scoring pass",
    )
    a.set_xlabel("pool size (millions)")
    a.set_ylabel("ns per candidate")
    a.set_ylim(bottom=0)
    a.legend()
    a.set_title("time per candidate, embedding cost, m = 1k")
    rows = list(sizes) + ([results["fused"]] if "fused" in results else [])
    labels = [f"{r['n'] / 1e6:g}M {'texts' if r['texts'] else 'vectors'}" for r in rows]
    stored = [r["stored_bytes"] / GIB for r in rows]
    peak = [max(r[c]["cold"]["rss_peak"] for c in ("embedding", "fused") if c in r) / GIB for r in rows]
    xs = range(len(rows))
    b.bar([x - 0.2 for x in xs], stored, 0.4, label="stored rows")
    b.bar([x + 0.2 for x in xs], peak, 0.4, label="peak server RSS (cold Select)")
    b.set_xticks(list(xs), labels)
    b.set_ylabel("GiB")
    b.legend()
    b.set_title("memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out_dir: Path, results: dict[str, Any], *, quick: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "scale-quick" if quick else "scale"
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    _plot(out_dir / f"{stem}.png", results)
    lines = [
        "# Scale: millions of candidates on one machine",
        "",
        f"Machine: {results['machine']}; load average {results['load_end']:.1f} at the end. "
        f"m = {results['m']} targets, k = 1,000, global mode, float16 pools, a real `gotd serve` process "
        "and the Python client on 127.0.0.1 (`gotd bench scale`).",
        "",
        "## Select",
        "",
        "| n | cost | cold Select s | load s | solve s | score s | cached Select s | score ns/cand. | "
        "cold ns/cand. | stored GiB | peak RSS GiB | peak / stored |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r, "embedding") for r in results["sizes"]]
    if "fused" in results:
        lines += [_row(results["fused"], c) for c in ("embedding", "fused")]
    lines += ["", "## Ingest (Ingestor.ingest_batch, precomputed embeddings)", ""]
    lines += ["| rows | kind | s | rows/s |", "|---|---|---|---|"]
    lines += [
        f"| {i['rows']:,} | {i['kind']} | {i['seconds']:.1f} | {i['rate']:,.0f} |" for i in results["ingest"]
    ]
    if results["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [
            f"- {s['what']} pool of {s['n']:,}: the server would need about {s['need_gib']:.1f} GiB, "
            f"{s['allowed_gib']:.1f} GiB allowed (per-process budget of this shared machine, or free memory)"
            for s in results["skipped"]
        ]
    lines += ["", f"![time per candidate and memory]({stem}.png)", ""]
    (out_dir / f"{stem}.md").write_text("\n".join(lines))
