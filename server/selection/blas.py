"""numpy's BLAS on one thread while the validated cost runs (:func:`single_threaded_blas`).

The validation's products are small (a few thousand rows by at most 1,409 columns): split over
OpenBLAS's threads they spend more time waiting for each other than computing, and on a loaded
machine much more. Measured at the ``gotd bench autocost`` sizes (1,000 targets, 1,024 pool rows per
fit, load average about 5): one discriminator fit 0.17-0.20 s on one thread against 0.16-0.86 s on
OpenBLAS's default two (docs/benchmarks/autocost-learned.md).

The OpenBLAS numpy ships has one thread pool for the whole process, so the limit is process-wide and
covers the validation's fold threads too; overlapping validations share it: the first to enter sets it,
the last to leave restores the library's own setting. threadpoolctl lets only one "controlling" thread
change a process-wide OpenBLAS (the first to try; others are silently ignored), while a server runs
each request on whichever worker thread is free, so every change here first hands control to the
calling thread (under this module's lock, which serialises every change it makes). The validation
always runs its products on one thread, so its sums (hence its choice) do not depend on the machine's
thread settings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import OpenBLASController, ThreadpoolController

__all__ = ["single_threaded_blas"]

_LOCK = threading.Lock()
_state: dict[str, Any] = {"depth": 0, "limiter": None, "controller": None}


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS limited to one thread inside the block (process-wide, re-entrant, thread-safe)."""
    with _LOCK:
        if _state["depth"] == 0:
            if _state["controller"] is None:  # inspects the loaded libraries once
                _state["controller"] = ThreadpoolController()
            OpenBLASController.clear_controlling_thread(force=True)
            _state["limiter"] = _state["controller"].limit(limits=1, user_api="blas")
        _state["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                OpenBLASController.clear_controlling_thread(force=True)
                _state["limiter"].restore_original_limits()
                OpenBLASController.clear_controlling_thread(force=True)
                _state["limiter"] = None
