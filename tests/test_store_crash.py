"""Crash safety of the LMDB store: SIGKILL mid-ingest keeps exactly the acknowledged batches; stale
readers of dead processes are cleared on open."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gotd.cache.records import Record
from gotd.cache.store.core import Store
from tests._store_helpers import CHILD_INGEST, batch_vectors

DIM = 32


def _run_child_and_kill(data_dir: Path, seed: int, map_size: int) -> list[int]:
    """Start the ingest child, SIGKILL it after a random number of acks; return every ack it printed."""
    rng = random.Random(seed)
    kill_after = rng.randint(1, 8)
    argv = [sys.executable, "-c", CHILD_INGEST, str(data_dir), "2000", "200", "48", str(map_size)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        acked: list[int] = []
        for line in proc.stdout:
            if line.startswith("ack"):
                acked.append(int(line.split()[1]))
            if len(acked) >= kill_after:
                break
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
    assert proc.returncode == -signal.SIGKILL
    assert "done" not in rest, "the child finished before the kill"
    acked += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("ack")]
    return acked


@pytest.mark.parametrize(("seed", "map_size"), [(1, 1 << 30), (2, 1 << 30), (3, 128 * 1024)])
def test_sigkill_mid_ingest_keeps_exactly_the_acknowledged_batches(
    tmp_path: Path, seed: int, map_size: int
) -> None:
    acked = _run_child_and_kill(tmp_path, seed, map_size)
    assert acked == list(range(len(acked)))
    with Store(tmp_path) as store:
        info = store.get_pool("crash")
        assert info.count % 200 == 0, "a batch was partially written"
        batches = info.count // 200
        assert batches in (len(acked), len(acked) + 1), (batches, acked)
        assert info.version == batches
        arrays = store.load_vectors("crash")
        for b in range(batches):
            x = batch_vectors(b, 200, 48)
            expected = x / np.linalg.norm(x, axis=1, keepdims=True)
            np.testing.assert_allclose(arrays.vectors[b * 200 : (b + 1) * 200], expected, atol=1e-6)
            assert arrays.ids[b * 200] == f"b{b}-0"
            assert arrays.domains[b * 200 + 199] == f"d{b}"
        after = store.upsert("crash", [Record(id="after", embedding=np.ones(48))], model="m", dim=48)
        assert after.version == batches + 1


_HOLD = (
    "import sys, time\nfrom pathlib import Path\nfrom gotd.cache.store.core import Store\n"
    "s = Store(Path(sys.argv[1]))\n"
    "txn = s.env.env.begin() if sys.argv[2] == 'read' else None\n"
    "print('ready', flush=True)\ntime.sleep(120)\n"
)


def test_stale_readers_are_cleared_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reader killed while another process keeps the environment open leaves a slot; open clears it."""
    Store(tmp_path).close()
    children = []
    try:
        for mode in ("hold", "read"):
            child = subprocess.Popen(
                [sys.executable, "-c", _HOLD, str(tmp_path), mode], stdout=subprocess.PIPE, text=True
            )
            children.append(child)
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        os.kill(children[1].pid, signal.SIGKILL)
        children[1].wait()
        with caplog.at_level(logging.WARNING, logger="gotd.cache.store.env"), Store(tmp_path) as store:
            assert store.list_pools() == []
        assert any("stale LMDB reader" in r.getMessage() for r in caplog.records)
    finally:
        for child in children:
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
