"""The ``gotd`` CLI against a real ``gotd serve`` subprocess, with JSONL files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
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
