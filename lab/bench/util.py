"""Shared pieces of the benchmarks and the evaluation: the machine line, timing, memory, synthetic data."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else the platform's processor ("unknown CPU" if none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    """Total memory of the machine in GiB."""
    return float(psutil.virtual_memory().total) / 2**30


def rss_mb(pid: int | None = None) -> tuple[float, float]:
    """Resident set size and its peak of a process (default: this one), in MB.

    The peak is the kernel's high-water mark where the platform reports it (Linux ``ru_maxrss`` /
    VmHWM through psutil's memory info), else the current RSS.
    """
    info = psutil.Process(pid).memory_full_info() if pid is not None else psutil.Process().memory_info()
    rss = float(info.rss) / 2**20
    peak = float(getattr(info, "peak_wset", 0) or 0) / 2**20
    if pid is None:
        import resource

        peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return rss, max(rss, peak)


def best_seconds(fn: Callable[[], Any], rounds: int) -> float:
    """The fastest of ``rounds`` timed calls of ``fn`` (other work on shared cores only slows a run)."""
    best = float("inf")
    for _ in range(max(1, rounds)):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def machine() -> str:
    """One line naming the machine and the versions that matter, for every benchmark report."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load:.1f} at the start"
    )


def clustered_vectors(n: int, dim: int, *, seed: int, centers: int = 16, spread: float = 0.35) -> np.ndarray:
    """Unit vectors scattered around ``centers`` random directions (float32), like sentence embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    x = c[rng.integers(0, centers, n)] + noise
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out
