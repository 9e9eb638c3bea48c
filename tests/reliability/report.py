"""Render docs/reliability.md from the last reliability run (``make reliability``).

Inputs: ``build/reliability/*.json`` (one per test, written by the suite's ``figures`` fixture) and
``build/reliability/junit.xml`` (outcome and time per test). Usage::

    python tests/reliability/report.py [FIGURES_DIR] [OUTPUT]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AREAS = [
    ("test_crash", "Crash during ingest"),
    ("test_cache_faults", "Cache faults"),
    ("test_load", "Load"),
    ("test_bad_input", "Bad input (hypothesis)"),
    ("test_cancel", "Deadlines and cancellation"),
    ("test_names", "Security: names and tokens"),
    ("test_event_loop", "Event loop under a maximal request"),
    ("test_snapshot_race", "One snapshot per request"),
]
FINDINGS = [
    (
        "server/convert.py",
        "`meta_json` nested deeper than Python's recursion limit raised RecursionError: INTERNAL instead of "
        "INVALID_ARGUMENT",
        "test_fuzz_put_target_set",
    ),
    (
        "server/selection_config.py",
        "a positive but extreme ε (1e-300, 1e300) overflowed the float32 kernels (2/ε): INTERNAL; ε must now "
        "lie in [1e-38, 1e38] (INVALID_ARGUMENT otherwise)",
        "test_fuzz_score",
    ),
    (
        "server/job.py",
        "a cached potential that passes the codec but is garbage (NaN, foreign ε or mode, metadata missing "
        "or of the wrong type) crashed Select/Score with INTERNAL or ranked with the entry's ε, and a "
        "poisoned warm start failed the solve; such entries are now a miss, counted as `corrupt`",
        "test_garbage_in_redis_gives_the_same_ranking, test_poisoned_warm_start_is_ignored",
    ),
    (
        "server/interceptors.py, server/app.py",
        "grpc's `maximum_concurrent_rpcs` frees a slot only after the client has seen the status, so 32 "
        "clients calling one at a time under the default limit of 32 got spurious RESOURCE_EXHAUSTED (about "
        "1% of calls); the limit is now enforced in the boundary interceptor, which frees the slot before "
        "the status is sent (health exempt)",
        "test_load_gotd_serve, test_load_in_process",
    ),
]
HARDENING = [
    (
        "Caches cannot outlive the code",
        "The dual-cache key's code part was the package version (0.1.0 across commits). It is now "
        "`a<ALGORITHM_VERSION>.<hash>` of every fixed default behind a potential or a score (SelectionConfig "
        "defaults, paper-mode cluster count and seed, projection, ε-scaling, block sizes, relative-ε rows, "
        "k-means, sketch width, tokenizer and n-gram rules, embedding weight), "
        "`server/selection/algorithm.py`.",
        "tests/test_algorithm_version.py: a frozen fingerprint of the defaults and of the rules' outputs on "
        "fixed inputs (tokens, IDF, k-means, the three modes' rankings) fails until the version is bumped; "
        "a server whose sketch width or block size changed misses the potential cached before.",
        "code part `a1.592ea67a19e290a0`; 2 of 2 changed defaults missed",
    ),
    (
        "The event loop only moves bytes",
        "Record conversion and validation (JSON metadata, embeddings, 20k inline targets) run on the worker "
        "pool with the work they feed, so large record lists are built and freed there; the pool count after "
        "an Ingest batch is read there too; messages of 64 KiB or more are decoded on a thread "
        "(`DecodeOffLoop`, innermost interceptor; an undecodable message is INVALID_ARGUMENT instead of "
        "grpc's generic failure); shutdown joins the workers and closes the caches and the store off the "
        "loop; `gotd serve` runs with a 1 ms GIL switch interval.",
        "tests/reliability/test_event_loop.py: a real `gotd serve` gets one 64 MiB Ingest batch (21,604 "
        "records with embeddings and JSON metadata) and a Select with 20,000 inline targets while a thread "
        "probes health; every check must be answered within 1.5 s (the goal is 100 ms; the bound is "
        "generous: idle checks alone reach 0.6 s on the shared machine at load 20).",
        "same machine, load average 11: health during the Ingest p50 2.8 ms, p99 45.9 ms, max 299.9 ms "
        "(idle in the same run: p99 44.6 ms, max 362.4 ms); during the Select max 131.8 ms. Old code, same "
        "test: max 4684 ms during the Ingest, 1406 ms during the Select. Rerun on main at load 20: "
        "during the Ingest p50 3.5 ms, p99 171 ms, max 344 ms (idle max 600 ms). Remaining stalls: grpc's "
        "own receive of a 64 MiB message and the machine's load",
    ),
    (
        "One snapshot per request",
        "Select and Score check that the pool they resolved the target against is the incarnation whose "
        "arrays they read (uid, model, dim), and Score checks that the id→row lookup names the same ids in "
        "its snapshot (rows are append-only, an id keeps its row); otherwise the request reads a newer "
        "snapshot (at most 3, then UNAVAILABLE, which clients retry), counted in `gotd_snapshot_retries`. "
        "The pool-array cache is keyed by (name, uid, version), the dual-cache key takes uid and model from "
        "the snapshot.",
        "tests/reliability/test_snapshot_race.py: 40 ingest batches race two Score loops (asking for ids "
        "being ingested at that moment) and a Select loop; Score must be OK or NOT_FOUND, every Select OK "
        "with the pool size of its version.",
        "Scores OK 50, NOT_FOUND 38, INVALID_ARGUMENT 0, 20 retries on a newer snapshot; Selects 13/13 "
        'consistent. Old code, same test: 25 of 70 Scores INVALID_ARGUMENT ("ids outside the domains '
        'kept by the exact mode")',
    ),
    (
        "Safe deployment defaults",
        "`metrics_host` setting (`--metrics-host`, image: 0.0.0.0); a non-loopback listen address without "
        "token or TLS is a configuration error unless `trusted_proxy` is set (the image listens on 0.0.0.0, "
        "so it refuses to start without one of the three); a token over plaintext is a start-up warning; "
        "pool labels of `gotd_pool_candidates` are bounded by `metrics_max_pools` (100), the rest summed "
        'under `pool="_other"`.',
        "tests/test_deploy_defaults.py: the Dockerfile's ENV does not load without a token, TLS or "
        "trusted proxy; loopback-only without them; the warning; the metrics bind address; 7 pools under a "
        "bound of 3 export 2 labels + _other with the right sums after deletions; 1,000 pool names make 3 "
        "series.",
        "1,000 user pool names → 3 series (bound 2 + _other)",
    ),
    (
        "Disk that does not grow forever",
        "The text→embedding cache is bounded by generations (`embedding_cache_entries`, default 500,000 ≈ "
        "0.8 GB at 384-d): new entries go to the current generation, a hit in the previous one is copied "
        "forward, and when the current one holds half the bound the previous one is deleted; LMDB reuses "
        "the freed pages; `gotd compact --data-dir D --output D2` writes a copy without them (safe beside a "
        "running server). DeletePool deletes the cached embeddings of the pool's texts. GetPool reports "
        "entries, bound and evictions (`embedding_cache`, field 60); Prometheus "
        "`gotd_embedding_cache_entries` and `gotd_embedding_cache_evicted`.",
        "tests/test_embedding_cache.py: 401 texts under a bound of 100 never exceed it and a text looked "
        "up every batch survives; the store file's high-water mark stays flat once full; entries of an "
        "older gotd (24-byte keys) are evicted; DeletePool drops its 8 texts, the other pool's 4 stay; "
        "`gotd compact` writes a copy under 0.8× the file with the same entries, and refuses to overwrite.",
        "12,000 inserts of 384-d vectors under a bound of 2,000: LMDB high-water 2,707 pages after 4,000, "
        "2,748 after 12,000 (unbounded: about 675 pages per 1,000 entries, ≈8,100); 6,000 inserts under "
        "2,000: data file 11.2 MB, compacted copy 5.6 MB",
    ),
    (
        "Tests that compare rankings, not lengths",
        "`tests/reliability/reference.py` computes what a default server must answer from the committed "
        "vectors (the library's solve, score and near-copy walk, the store's id hashes).",
        "test_crash: after the restart and after the re-sent calls, the top 10 (ids and scores, rtol 1e-5) "
        "equals the reference on the store's rows; test_load: every Select on a target set under load "
        "equals its reference top 50 and every Score its reference scores (else WRONG_ANSWER, a failure); "
        "test_names: each odd name ranks as the reference; test_demo: the cached ranking equals the cold "
        "one, precision recomputed from the returned ids and above the pool's base rate, a re-run ranks "
        "identically; test_evaluation_seeds: encode seconds follow the per-text shares exactly; benchmark "
        "smoke tests: report keys, every ratio equal to the quotient of the same run's numbers, and the "
        "report prints those ratios.",
        "load in process: 605 RPCs, all equal to the reference; crash seed 0 (exact) and seed 1 (global, "
        "50k): rankings equal to the reference",
    ),
    (
        "The CLI as a new user meets it",
        "Verified by hand against a real `gotd serve` (the lead's client/cli.py fixes): each case below "
        "prints one `error: ...` line, exit 1 (usage errors: click's usage message, exit 2), no "
        "traceback, no spurious `UNKNOWN: Exception iterating requests`; progress bars are off when stderr "
        "is not a terminal. Added: a bad record after whole batches were sent says that those batches may "
        "have been ingested and that a rerun is safe (seen by hand: 30 of 50 earlier records had landed).",
        "tests/test_cli.py, table-driven: empty file, bad JSON line, bad line after batches were sent, "
        "missing id, NaN embedding, missing file, a record the server refuses, --mode fast, --cost "
        "cheap, -k 0, --output into a missing folder, empty or bad target file, unknown pool, server "
        "down; progress off a terminal (no carriage returns, one summary line).",
        "15 cases, all one line (or a usage error) with the right exit code",
    ),
    (
        "Redis trust boundary",
        "Documented (README, Deployment): the codec's checksum and checks catch corruption, not forgery; "
        "whoever can write to gotd's Redis can steer rankings, so that Redis must be private to gotd "
        "(private network, no other tenants, AUTH/ACLs, TLS via `rediss://` when remote). A Redis URL "
        "in a configuration error has its credentials replaced by `***@`.",
        "tests/test_redis_auth.py: a `requirepass` Redis through `redis://:password@...`: cache health "
        "SERVING, the potential written there, a repeat Select a hit with the same ranking; a wrong "
        "password: cache NOT_SERVING, the same ranking; the password in no log line (DEBUG) and not in "
        "the error of a bad URL. TLS (`rediss://`) is passed to redis-py as given, not tested here.",
        "garbage and poisoned entries: test_cache_faults (above)",
    ),
]
KNOWN_LIMITS = (
    "Known limit, not changed: a cancel during a Sinkhorn solve takes effect at the next pass (the stop is "
    "checked once per pass, not per row block), so an exact solve of 20,000 × 20,000 can run one more pass "
    "(seconds) after a cancel; scoring stops at the next block. See the cancellation figures below."
)


def _load(
    figures_dir: Path,
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    entries = {}
    for path in sorted(figures_dir.glob("*.json")):
        entry = json.loads(path.read_text())
        entries[(entry["module"], entry["name"])] = entry
    outcomes = {}
    junit = figures_dir / "junit.xml"
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            module = case.get("classname", "").rsplit(".", 1)[-1]
            result = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    result = "FAILED"
                elif child.tag == "skipped":
                    result = "skipped"
            outcomes[(module, case.get("name", ""))] = {"result": result, "time": float(case.get("time", 0))}
    return entries, outcomes


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_fmt(v) for v in value) or "none"
    return str(value)


def _key_figures(module: str, figures: dict[str, Any]) -> str:
    """One line of the most telling figures of a test."""
    f = figures
    if not f:
        return ""
    if module == "test_crash":
        acked, present = f.get("records_acknowledged"), f.get("records_present")
        return f"{acked} acked / {present} present of {f.get('records')}; index {f.get('index')}"
    if module == "test_load" and "rpcs" in f:
        lat = f["latency"]["all"]
        rss = f["rss_mib"]
        return (
            f"{f['rpcs']} RPCs, {f['failures']} failures, p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"RSS {rss['before']} → {rss['after']} MiB"
        )
    if module == "test_load":
        return f"codes {_fmt(f.get('codes', {}))}"
    if module == "test_bad_input":
        return f"{f.get('examples')} examples: {_fmt(f.get('codes', {}))}"
    if module == "test_event_loop" and "health_during_ingest" in f:
        during, idle = f["health_during_ingest"], f["health_idle"]
        return (
            f"health during a {f['ingest_mib']} MiB Ingest: p50 {during['p50_ms']} ms, "
            f"p99 {during['p99_ms']} ms, max {during['max_ms']} ms (idle p99 {idle['p99_ms']} ms)"
        )
    if "scenarios" in f:
        return f"{len(f['scenarios'])} scenarios, all with the healthy ranking"
    return _fmt({k: v for k, v in f.items() if not isinstance(v, dict | list)})


def _table(rows: list[list[Any]], header: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*out, ""]


def _detail(module: str, entries: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    if module == "test_crash":
        keys = [
            "seed", "records", "calls", "killed_after_s", "calls_acknowledged", "records_acknowledged",
            "records_present", "batches_of_interrupted_call_present", "client_saw", "index",
            "max_vector_error", "first_startup_s", "restart_s", "select_after_restart_mode",
        ]  # fmt: skip
        rows = [[e["figures"].get(k, "") for k in keys] for e in entries if e["figures"]]
        return _table(rows, keys)
    for e in entries:
        f = e["figures"]
        if not f:
            continue
        lines.append(f"**{e['name']}**")
        lines.append("")
        if "scenarios" in f:
            columns = list(dict.fromkeys(k for values in f["scenarios"].values() for k in values))
            rows = [[name, *(values.get(k, "") for k in columns)] for name, values in f["scenarios"].items()]
            lines += _table(rows, ["scenario", *columns])
            rest = {k: v for k, v in f.items() if k != "scenarios"}
            if rest:
                lines += [_fmt(rest), ""]
        elif "latency" in f and "rpcs" in f:
            rows = [[m, v["n"], v["p50_ms"], v["p99_ms"], v["max_ms"]] for m, v in f["latency"].items()]
            lines += _table(rows, ["method", "RPCs", "p50 ms", "p99 ms", "max ms"])
            lines += [
                f"{f['clients']} clients for {f['seconds']} s: {f['rpcs']} RPCs ({f['rpcs_per_s']}/s), "
                f"{f['failures']} failures, codes {_fmt(f['codes'])}. RSS of the {f['rss_of']} (MiB): "
                f"{_fmt(f['rss_mib'])}.",
                "",
            ]
        elif "selects" in f:
            rows = [[p, v["n"], v["p50_ms"], v["p99_ms"], v["max_ms"]] for p, v in f["selects"].items()]
            lines += _table(rows, ["phase", "Selects", "p50 ms", "p99 ms", "max ms"])
            lines += [
                f"failures: {_fmt(f['failures'])}; health back to SERVING {f['health_recovery_s']} s "
                f"after Redis restarted; cache events {_fmt(f['events'])}.",
                "",
            ]
        else:
            lines += [_fmt(f), ""]
    return lines


def render(figures_dir: Path) -> str:
    entries, outcomes = _load(figures_dir)
    keys = sorted(set(entries) | set(outcomes))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "?"
    load = os.getloadavg()
    lines = [
        "# Reliability and security suite: last run",
        "",
        f"Generated by `make reliability` ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} at the end). Tests: `tests/reliability/`; every test is marked "
        "`reliability`, the long ones also `slow` (the default CI run, `-m 'not slow and not bench'`, "
        "runs the others). Seconds are measured and reported here, never asserted; all servers, Redis "
        "instances and clients run on 127.0.0.1 on this 2-core machine shared with other work.",
        "",
        "Auth basics (token on every RPC, TLS, mTLS, a client certificate of another CA refused) are in "
        "`tests/test_security.py`; status codes one by one in `tests/test_status_codes.py`.",
        "",
    ]
    passed = sum(1 for k in keys if outcomes.get(k, {}).get("result") == "passed")
    lines += [f"**{passed} of {len(keys)} tests passed.**", ""]
    rows = []
    for key in keys:
        entry = entries.get(key, {"doc": "", "figures": {}, "markers": []})
        outcome = outcomes.get(key, {"result": "not run", "time": entry.get("seconds", 0)})
        ci = "default CI" if "slow" not in entry.get("markers", []) else "slow"
        rows.append(
            [
                f"{key[0]}::{key[1]}",
                entry["doc"],
                outcome["result"],
                ci,
                f"{outcome['time']:.1f}",
                _key_figures(key[0], entry["figures"]),
            ]
        )
    lines += _table(rows, ["test", "what it proves", "result", "run", "s", "figures"])
    lines += ["## Bugs the suite found (fixed, each in its own commit)", ""]
    lines += _table([list(f) for f in FINDINGS], ["where", "bug", "found by"])
    lines += [KNOWN_LIMITS, ""]
    lines += hardening_lines()
    for module, title in AREAS:
        group = [entries[k] for k in keys if k[0] == module and k in entries]
        if not group:
            continue
        lines += [f"## {title}", ""]
        lines += _detail(module, group)
    return "\n".join(lines).rstrip() + "\n"


def hardening_lines() -> list[str]:
    """The review's hardening points (issue 18): what changed, the test that shows it, its figures."""
    lines = ["## Hardening from the service review (issue 18)", ""]
    lines += _table(
        [list(h) for h in HARDENING], ["point", "change", "test (fails on the old code)", "figures"]
    )
    return lines


def main(argv: list[str]) -> int:
    figures_dir = Path(argv[1]) if len(argv) > 1 else ROOT / "build" / "reliability"
    out = Path(argv[2]) if len(argv) > 2 else ROOT / "docs" / "reliability.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(figures_dir))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
