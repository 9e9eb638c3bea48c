"""Helpers of the reliability suite: a real ``gotd serve`` subprocess, RSS, worker and LMDB probes, figures.

Figures: every test of the suite gets a ``figures`` dict (see conftest.py) that is written to
``build/reliability/<test>.json`` when the test ends; ``tests/reliability/report.py`` renders them into
docs/reliability.md. Seconds are measured and reported there, never asserted.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

import gotd.cache
import gotd.server

ROOT = Path(__file__).resolve().parents[2]
FIGURES_DIR = ROOT / "build" / "reliability"
WORKER_PREFIX = "gotd-worker"
_GOTD_DIRS = tuple(str(Path(m.__file__ or "").resolve().parent) for m in (gotd.server, gotd.cache))
_LISTENING = re.compile(r"gotd listening on (\S+)")


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (default: this one), in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, p50, p99 and max of latencies given in seconds, reported in milliseconds."""
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1e3, 1),
        "p99_ms": round(percentile(seconds, 99) * 1e3, 1),
        "max_ms": round(max(seconds) * 1e3, 1) if seconds else float("nan"),
    }


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def busy_workers(prefix: str = WORKER_PREFIX) -> list[str]:
    """Names of the server's worker threads that are running gotd code (idle ones wait on their queue)."""
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        if not thread.name.startswith(prefix) or thread.ident is None:
            continue
        frame = frames.get(thread.ident)
        while frame is not None:
            if frame.f_code.co_filename.startswith(_GOTD_DIRS):
                busy.append(thread.name)
                break
            frame = frame.f_back
    return busy


def open_read_txns(store: Any) -> int:
    """Read transactions of this process open in the store's LMDB environment (``txnid`` not ``-``)."""
    pid = str(os.getpid())
    lines = store.env.env.readers().splitlines()[1:]
    return sum(1 for line in lines if line.split()[:1] == [pid] and line.split()[-1] != "-")


def metric_value(metric: Any, **labels: str) -> float:
    """Current value of a prometheus-client counter or gauge (optionally one labelled child)."""
    child = metric.labels(**labels) if labels else metric
    return float(child._value.get())


def histogram_count(metric: Any) -> float:
    """Number of observations of an unlabelled prometheus-client histogram."""
    for sample in metric.collect()[0].samples:
        if sample.name.endswith("_count"):
            return float(sample.value)
    return 0.0


class ServeProcess:
    """A real ``gotd serve`` subprocess on 127.0.0.1 port 0 (stderr kept in ``log_path``).

    ``start()`` returns once the server printed ``gotd listening on HOST:PORT``; ``kill()`` sends
    SIGKILL, ``stop()`` SIGTERM (graceful) and SIGKILL after ``timeout``. The process is always reaped.
    """

    def __init__(self, data_dir: Path, log_path: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.args = args
        self.address = ""
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 240.0) -> ServeProcess:
        script = shutil.which("gotd", path=str(Path(sys.executable).parent))
        command = [script] if script else [sys.executable, "-c", "from gotd.client.cli import main; main()"]
        command += ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir), *self.args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("a")
        started = time.perf_counter()
        self._proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env
        )
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self._proc, self._lines), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            found = _LISTENING.search(line)
            if found:
                self.address = found.group(1)
                self.startup_seconds = time.perf_counter() - started
                return self
        self.kill()
        raise RuntimeError(f"gotd serve did not start; log tail: {self.log_tail()}")

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._reap(10.0)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful stop), SIGKILL after ``timeout``; returns the exit code."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int | None:
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
