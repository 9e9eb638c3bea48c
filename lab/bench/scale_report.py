"""Report of ``gotd bench scale``: docs/benchmarks/scale.md, scale.json and scale.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GIB = 2**30

NOTES = [
    "## Reading the numbers",
    "",
    "- **Load.** The load average at the start and the end of the run is at the top: on a shared "
    "machine (load above the 2 cores) absolute times are several times what the same code does "
    "alone, and the ratios between rows of one run are what to read. The pools are other than the "
    "issue's 1M/3M/10M when the run says so (`GOTD_BENCH_SCALE_SIZES`), and pools that do not fit "
    "the per-process budget (`GOTD_BENCH_SCALE_BUDGET_GIB`, 4 GiB unless set) are skipped and listed.",
    "- **One server for the embedding series.** The pools of the embedding rows grow in one server "
    "process (1M, then 3M, then 10M rows of one pool). A new version grows from the snapshot held "
    "only inside that snapshot's spare rows (12.5%); a pool that grew more is read whole after the "
    "older snapshot left, so no load holds the pool twice.",
    "- **Time per candidate.** Load (one copy of the stored rows), the summary solve (fixed size, "
    "8,192 rows) and the scoring pass (one blockwise c-transform, float16 rows upcast per block, "
    "float32 GEMM) are the cold Select; only the load and the pass grow with n, so the cold time per "
    "candidate falls as n grows and the scoring pass's stays flat.",
    "- **Fused vs embedding.** The fused scoring pass multiplies 1,408 columns per candidate instead "
    "of 384 (two GEMMs, embedding and sketch parts, into one accumulator), 3.7x the arithmetic; the "
    "first fused Select of a pool version also computes its IDF weights and inverse sketch norms "
    "(one pass over the sketch rows, then cached: 4 bytes a candidate).",
    "- **RSS vs anonymous memory.** The store is an LMDB memory map: a load reads the pool through "
    "it and hands each chunk's pages back once copied (`madvise(MADV_DONTNEED)`: they stay in the "
    "page cache, out of the server's RSS). The anonymous part is what the server itself holds: the "
    "snapshot (stored rows, ids, keys), one block of the pass and O(n) float32/float64 vectors; the "
    "server fixes glibc's mmap threshold (1 MiB), so freed blocks leave it instead of staying in "
    "its heap. The process's fixed part (Python, torch, gRPC; the encoder model is not loaded, "
    "`GOTD_MODEL_PRELOAD=false`, 0.28 GiB less: the idle RSS, "
    "in the JSON as `rss_idle`) is in both and weighs most on the smallest pools.",
    "- **Ingest.** Measured through the server's `Ingestor.ingest_batch` (validation, one LMDB "
    "transaction per 10,000 records, sketching of texts) into the growing pool, beside the running "
    "server; texts are sketched a block at a time in numpy (`server/selection/ngram_hash.py`), "
    "and stored sparse (bucket indices and float16 values of a text's non-zero buckets, about 306 "
    "bytes for a 40-word text instead of a 2 KiB dense row: `cache/store/sketch_codec.py`); with "
    "texts the rate is bounded by the n-gram hashing. "
    "Pools keep their id index keyed by the ids themselves (`cache/store/idindex.py`): the "
    "benchmark's sequential ids cost a batch the same pages at any pool size, where random ids "
    "(UUIDs) would dirty about one index page per id. "
    "The idle-machine figure for float32 vectors is in [ingest.md](ingest.md).",
    "- **Stored bytes.** The pool's vector and sketch chunks as LMDB holds them (sketches sparse); "
    "the snapshot holds the same rows with the sketches in compact sparse form too (an 8-byte row "
    "pointer and 4 bytes an entry: `snapshot rows`), and multiplies them as such "
    "(`server/ot/parts.py`, `SparsePart`).",
    "",
]


def _gib(b: float) -> str:
    return f"{b / GIB:.2f}"


def _row(r: dict[str, Any], cost: str, idle: float) -> str:
    cold, cached = r[cost]["cold"], r[cost]["cached"]
    t = cold["timings_ms"]
    per = t.get("score", 0.0) * 1e6 / r["n"]  # ns per candidate of the scoring pass
    return (
        f"| {r['n']:,} | {cost} | {cold['seconds']:.1f} | {t.get('load', 0) / 1e3:.1f} | "
        f"{t.get('solve', 0) / 1e3:.1f} | {t.get('score', 0) / 1e3:.1f} | {cached['seconds']:.2f} | "
        f"{per:.0f} | {cold['seconds'] * 1e9 / r['n']:.0f} | {_gib(r['stored_bytes'])} | "
        f"{_gib(cold['rss_peak'])} | {cold['rss_peak'] / r['stored_bytes']:.2f} | "
        f"{_gib(cold['anon_peak'])} | {(cold['rss_peak'] - idle) / r['stored_bytes']:.2f} | "
        f"{_gib(r.get('snapshot_bytes', r['stored_bytes']))} |"
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


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _goals(results: dict[str, Any]) -> list[str]:
    """The issue's goals against this run's figures."""
    sizes = results["sizes"]
    out = ["| goal | measured | |", "|---|---|---|"]
    ten = [r for r in sizes if r["n"] >= 10_000_000]
    if ten:
        t = ten[0]["embedding"]["cold"]["seconds"]
        out.append(f"| 10M x 1k, embedding cost: cold Select <= 90 s | {t:.0f} s | {_verdict(t <= 90)} |")
    elif sizes:
        big = sizes[-1]
        est = big["embedding"]["cold"]["seconds"] * 10_000_000 / big["n"]
        out.append(
            f"| 10M x 1k, embedding cost: cold Select <= 90 s | not run (skipped below); "
            f"{est:.0f} s extrapolated from {big['n']:,} | **not measured** |"
        )
    if "fused" in results:
        f = results["fused"]
        ratio = f["fused"]["cold"]["seconds"] / f["embedding"]["cold"]["seconds"]
        score = f["fused"]["cold"]["timings_ms"]["score"] / f["embedding"]["cold"]["timings_ms"]["score"]
        out.append(
            f"| fused cold Select <= 2x the embedding one (same {f['n']:,} pool) | {ratio:.2f}x "
            f"(scoring pass {score:.2f}x) | {_verdict(ratio <= 2)} |"
        )
    idle = {id(r): results["rss_idle"] for r in sizes}
    if "fused" in results:
        idle[id(results["fused"])] = results["rss_idle_fused"]
    rows = [(r, c) for r in [*sizes, results.get("fused")] if r for c in ("embedding", "fused") if c in r]
    if rows:
        rss = max(r[c]["cold"]["rss_peak"] / r["stored_bytes"] for r, c in rows)
        anon = max(r[c]["cold"]["anon_peak"] / r["stored_bytes"] for r, c in rows)
        grown = max((r[c]["cold"]["rss_peak"] - idle[id(r)]) / r["stored_bytes"] for r, c in rows)
        out.append(
            f"| peak server RSS during a Select <= 1.5x the pool's stored bytes, every size and cost | "
            f"worst {rss:.2f}x; anonymous memory {anon:.2f}x; RSS above the idle server {grown:.2f}x | "
            f"{_verdict(rss <= 1.5)} |"
        )
    for kind, goal in (("vectors+texts", 50_000), ("vectors", 100_000)):
        rates = [i["rate"] for i in results["ingest"] if i["kind"] == kind]
        if rates:
            out.append(
                f"| ingest, {kind}: >= {goal:,}/s | {min(rates):,.0f}/s | {_verdict(min(rates) >= goal)} |"
            )
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]

        def per(r: dict[str, Any], what: str) -> float:
            cold = r["embedding"]["cold"]
            ms = float(cold["timings_ms"]["score"]) if what == "score" else float(cold["seconds"]) * 1e3
            return ms / int(r["n"])

        score, cold = per(hi, "score") / per(lo, "score"), per(hi, "cold") / per(lo, "cold")
        out.append(
            f"| time per candidate at the largest n within 1.2x of the smallest | "
            f"{hi['n']:,} vs {lo['n']:,}: scoring pass {score:.2f}x, cold Select {cold:.2f}x | "
            f"{_verdict(cold <= 1.2)} |"
        )
    return out


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
        "cold ns/cand. | stored GiB | peak RSS GiB | RSS / stored | peak anon. GiB | (RSS - idle) / stored | "
        "snapshot rows GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r, "embedding", results["rss_idle"]) for r in results["sizes"]]
    if "fused" in results:
        lines += [_row(results["fused"], c, results["rss_idle_fused"]) for c in ("embedding", "fused")]
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
    lines += ["", "## Goals (issue 15)", "", *_goals(results)]
    lines += ["", f"![time per candidate and memory]({stem}.png)", "", *NOTES]
    (out_dir / f"{stem}.md").write_text("\n".join(lines))
