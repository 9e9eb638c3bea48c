"""The ``gotd`` CLI against a real ``gotd serve`` subprocess, with JSONL files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import clustered

GOTD = [sys.executable, "-m", "gotd.client.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GOTD_TOKEN": "tok"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("cli")
    proc = subprocess.Popen(
        [*GOTD, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data), "--auth-token", "tok"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("gotd listening on "), line
    yield line.split()[-1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "SIGTERM must stop the server cleanly"
    proc.stdout.close()


def _gotd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*GOTD, *args], capture_output=True, text=True, env=ENV, timeout=300, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_round_trip(served: str, tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    x = clustered(120, seed=1)
    pool.write_text(
        "".join(json.dumps({"id": f"c{i}", "embedding": v.tolist()}) + "\n" for i, v in enumerate(x))
    )
    target = tmp_path / "target.jsonl"
    target.write_text(
        json.dumps({"id": "t0", "text": "linear algebra and matrices"}) + "\n"
        + json.dumps({"id": "t1", "embedding": clustered(1, seed=2)[0].tolist()}) + "\n"
    )  # fmt: skip
    out = _gotd("ingest", "--server", served, "--pool", "demo", str(pool))
    assert "inserted 120" in out.stdout
    ranked_path = tmp_path / "ranked.jsonl"
    _gotd("select", "--server", served, "--pool", "demo", "--target", str(target), "-k", "15",
          "--mode", "exact", "--output", str(ranked_path))  # fmt: skip
    rows = [json.loads(line) for line in ranked_path.read_text().splitlines()]
    assert [r["rank"] for r in rows] == list(range(1, 16))
    assert set(rows[0]) == {"id", "score", "rank"}
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    stdout_run = _gotd("select", "--server", served, "--pool", "demo", "--target", str(target), "-k", "15")
    assert [json.loads(line)["id"] for line in stdout_run.stdout.splitlines()] == [r["id"] for r in rows]
    listing = _gotd("pools", "--server", served).stdout.split()
    assert listing[:3] == ["demo", "120", "1"]
    assert listing[4] == "384"
    as_json = json.loads(_gotd("pools", "--server", served, "--json").stdout)
    assert as_json["count"] == 120


def test_cli_id_sets(served: str, tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "embedding": v.tolist()}) + "\n"
            for i, v in enumerate(clustered(60, seed=3))
        )
    )
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps({"id": "t0", "embedding": clustered(1, seed=2)[0].tolist()}) + "\n")
    _gotd("ingest", "--server", served, "--pool", "sets", str(pool))
    base = ["select", "--server", served, "--pool", "sets", "--target", str(target), "--mode", "exact",
            "--near-copy-cosine", "0"]  # fmt: skip
    top = [json.loads(line)["id"] for line in _gotd(*base, "-k", "10").stdout.splitlines()]
    rounds = []
    for _ in range(2):
        run = _gotd(*base, "-k", "5", "--exclude-set", "given", "--record-into", "given")
        rounds.append([json.loads(line)["id"] for line in run.stdout.splitlines()])
        assert "recorded 5 new ids into given" in run.stderr
    assert rounds[0] + rounds[1] == top
    assert _gotd("id-sets", "list", "--server", served, "--pool", "sets").stdout.split() == ["given", "10"]
    shown = _gotd("id-sets", "show", "given", "--server", served, "--pool", "sets")
    assert shown.stdout.split() == sorted(top)
    _gotd("id-sets", "delete", "given", "--server", served, "--pool", "sets")
    gone = _gotd("id-sets", "show", "given", "--server", served, "--pool", "sets", check=False)
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: NOT_FOUND: ")
    bad = _gotd(*base, "-k", "5", "--exclude-set", "a b", check=False)
    assert bad.stderr.strip().splitlines()[-1].startswith("error: INVALID_ARGUMENT: ")


def test_cli_delete_records(served: str, tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "embedding": v.tolist()}) + "\n"
            for i, v in enumerate(clustered(20, seed=4))
        )
    )
    _gotd("ingest", "--server", served, "--pool", "del", str(pool))
    conn = ["--server", served]
    by_args = _gotd("delete-records", "del", "d0", "d1", "nope", *conn)
    assert by_args.stdout.strip() == "del: deleted 2, not found 1; count 18, version 2"
    lines = tmp_path / "ids.txt"  # what `gotd id-sets show` prints: one id a line
    lines.write_text("d2\n\n  d3  \nd0\n")
    records = tmp_path / "ids.jsonl"
    records.write_text(json.dumps({"id": "d4"}) + "\n" + json.dumps({"id": "d5", "text": "x"}) + "\n")
    by_file = _gotd("delete-records", "del", "--ids-file", str(lines), *conn)
    assert by_file.stdout.strip() == "del: deleted 2, not found 1; count 16, version 3"
    both = _gotd("delete-records", "del", "d6", "--ids-file", str(records), *conn)
    assert both.stdout.strip() == "del: deleted 3, not found 0; count 13, version 4"
    assert _gotd("pools", *conn).stdout.split()[:3] == ["del", "13", "4"]
    missing = _gotd("delete-records", "del", "--ids-file", str(tmp_path / "none.txt"), *conn, check=False)
    assert (missing.returncode, missing.stderr.startswith("error: ")) == (1, True)
    assert "no such file" in missing.stderr
    nothing = _gotd("delete-records", "del", *conn, check=False)
    assert nothing.returncode == 2
    unknown = _gotd("delete-records", "nopool", "x", *conn, check=False)
    assert unknown.stderr.startswith("error: NOT_FOUND: ")


def test_cli_errors_print_the_status_code(served: str, tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps({"id": "t0", "embedding": clustered(1, seed=2)[0].tolist()}) + "\n")
    missing = _gotd(
        "select", "--server", served, "--pool", "missing", "--target", str(target), "-k", "3", check=False
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: NOT_FOUND: ")
    env = {**ENV, "GOTD_TOKEN": "bad"}
    denied = subprocess.run(
        [*GOTD, "pools", "--server", served], check=False, capture_output=True, text=True, env=env, timeout=60
    )
    assert denied.returncode == 1
    assert denied.stderr.startswith("error: UNAUTHENTICATED: ")


def test_console_script_is_installed() -> None:
    exe = shutil.which("gotd", path=str(Path(sys.executable).parent))
    assert exe is not None
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    for command in ("serve", "ingest", "select", "pools", "demo", "bench"):
        assert command in help_text


# -- the CLI as a new user meets it: every input mistake is one `error:` line, no traceback --------


@dataclass(frozen=True)
class Case:
    reason: str
    args: tuple[str, ...]
    code: int
    stderr: str  # regex the (whole, for exit 1: single-line) stderr must match


def _files(tmp: Path) -> None:
    unit = clustered(3, seed=5)
    rec = [json.dumps({"id": f"f{i}", "embedding": v.tolist()}) for i, v in enumerate(unit)]
    nan = {"id": "n", "embedding": [float("nan"), *unit[0].tolist()[1:]]}
    (tmp / "empty.jsonl").write_text("")
    (tmp / "good.jsonl").write_text("\n".join(rec) + "\n")
    (tmp / "badjson.jsonl").write_text(rec[0] + "\n{not json\n")
    more = [json.dumps({"id": f"m{i}", "embedding": v.tolist()}) for i, v in enumerate(unit)]
    (tmp / "late.jsonl").write_text("\n".join(rec + more) + "\n[1, 2]\n")  # line 7, after 3 batches of 2
    (tmp / "noid.jsonl").write_text(json.dumps({"embedding": unit[0].tolist()}) + "\n")
    (tmp / "nan.jsonl").write_text(json.dumps(nan) + "\n")
    (tmp / "dim.jsonl").write_text(json.dumps({"id": "d", "embedding": [1.0, 0.0, 0.0]}) + "\n")


ING = ("ingest", "--pool", "cli-cases")
SEL = ("select", "--pool", "cli-cases", "-k", "2", "--target")
SELECT = (*SEL, "{tmp}/good.jsonl")
CASES = [
    Case("empty file", (*ING, "{tmp}/empty.jsonl"), 1, r"error: .*empty\.jsonl: no records"),
    Case("bad JSON line", (*ING, "{tmp}/badjson.jsonl"), 1, r"error: .*:2: not valid JSON"),
    Case("bad line after sent batches", (*ING, "--batch-size", "2", "{tmp}/late.jsonl"), 1,
         r"error: .*late\.jsonl:7: .*up to 6 records, may have been ingested; .*run it again"),
    Case("missing id", (*ING, "{tmp}/noid.jsonl"), 1, r"error: .*:1: 'id' must be"),
    Case("NaN embedding", (*ING, "{tmp}/nan.jsonl"), 1, r"error: .*:1: 'embedding' has NaN"),
    Case("missing file", (*ING, "{tmp}/absent.jsonl"), 1, r"error: .*absent\.jsonl: no such file"),
    Case("server refuses a record", (*ING, "{tmp}/dim.jsonl"), 1, r"error: FAILED_PRECONDITION: .*dim.* 3"),
    Case("unknown --mode", (*SELECT, "--mode", "fast"), 2, r"--mode.*'fast' is not one of"),
    Case("unknown --cost", (*SELECT, "--cost", "cheap"), 2, r"--cost.*'cheap' is not one of"),
    Case("k below 1", ("select", "--pool", "cli-cases", "-k", "0", "--target", "{tmp}/good.jsonl"), 2,
         r"'-k' / '--k'"),
    Case("--output into a missing folder", (*SELECT, "--output", "{tmp}/nodir/out.jsonl"), 1,
         r"error: --output .*nodir/out\.jsonl: folder .*nodir does not exist"),
    Case("empty target file", (*SEL, "{tmp}/empty.jsonl"), 1,
         r"error: .*empty\.jsonl: no records \(a target set needs at least one\)"),
    Case("bad target file", (*SEL, "{tmp}/badjson.jsonl"), 1, r"error: .*badjson\.jsonl:2: not valid JSON"),
    Case("unknown pool", ("select", "--pool", "nope", "-k", "2", "--target", "{tmp}/good.jsonl"), 1,
         r"error: NOT_FOUND: pool 'nope' does not exist"),
    Case("server down", ("pools", "--server", "127.0.0.1:1", "--timeout", "5"), 1, r"error: UNAVAILABLE: "),
]  # fmt: skip


def test_cli_mistakes_are_one_clear_line(served: str, tmp_path: Path) -> None:
    _files(tmp_path)
    _gotd("ingest", "--server", served, "--pool", "cli-cases", str(tmp_path / "good.jsonl"))
    failed = []
    for case in CASES:
        args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
        if "--server" not in args:
            args[1:1] = ["--server", served]
        result = _gotd(*args, check=False)
        lines = result.stderr.strip().splitlines()
        ok = (
            result.returncode == case.code
            and "Traceback" not in result.stderr
            and re.search(case.stderr, result.stderr) is not None
            and (case.code != 1 or len(lines) == 1)
            and "Exception iterating requests" not in result.stderr
        )
        if not ok:
            failed.append((case.reason, result.returncode, result.stderr))
    assert not failed, failed


def test_cli_progress_degrades_off_a_terminal(served: str, tmp_path: Path) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(json.dumps({"id": f"x{i}", "text": f"note {i} on rivers"}) + "\n" for i in range(40))
    )
    ingest = _gotd("ingest", "--server", served, "--pool", "cli-texts", "--batch-size", "8", str(texts))
    select = _gotd("select", "--server", served, "--pool", "cli-texts", "--target", str(texts), "-k", "3")
    for run in (ingest, select):  # stderr is a pipe here: no carriage-return bars
        assert "\r" not in run.stderr
    assert select.stderr.strip().splitlines() == [select.stderr.strip()]
    assert select.stderr.startswith("selected 3 of 40 ")
    assert len(select.stdout.splitlines()) == 3


def test_every_client_command_takes_the_connection_options() -> None:
    """One definition of the connection options (``cli_common.connected``), each command's own timeout."""
    import typer

    from gotd.client.cli import app

    root = typer.main.get_command(app)
    timeouts = {
        ("ingest",): 3600.0,
        ("select",): 3600.0,
        ("pools",): 30.0,
        ("delete-records",): 300.0,
        ("id-sets", "list"): 30.0,
        ("id-sets", "show"): 120.0,
        ("id-sets", "delete"): 30.0,
    }
    connection = ["server", "token", "tls_ca", "tls_cert", "tls_key", "tls_server_name", "timeout"]
    for path, timeout in timeouts.items():
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        params = {p.name: p for p in command.params}
        assert [n for n in params if n in connection] == connection, path
        assert "conn" not in params
        assert params["timeout"].default == timeout, path
        assert (params["server"].default, params["server"].envvar) == ("127.0.0.1:50051", "GOTD_SERVER")
        assert params["token"].envvar == "GOTD_TOKEN"
