"""The dual-cache key's code part names every rule behind the numbers (issue 18).

A frozen fingerprint of the result-shaping defaults and of the rules' outputs on fixed inputs fails
when either changes without an :data:`ALGORITHM_VERSION` bump; a server whose default changed
misses the potential an older default cached.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch
import xxhash

from gotd.client.client import Client
from gotd.lab.demo import BackgroundServer
from gotd.server.ot import blocks
from gotd.server.selection import algorithm, sketches
from gotd.server.selection.algorithm import ALGORITHM_VERSION, code_version, result_rules, rules_hash
from gotd.server.selection.config import Mode, SelectionConfig
from gotd.server.selection.kmeans import id_keys, kmeans_labels
from gotd.server.selection.modes import rank
from gotd.server.selection.sketches import hashed_counts, idf_from_df
from tests.conftest import clustered, vector_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: ALGORITHM_VERSION -> (hash of the defaults, hash of the rules' outputs on fixed inputs).
#: When this test fails, the numbers of some potential or score may have changed: bump
#: ALGORITHM_VERSION in server/selection/algorithm.py and record the new pair under the new version.
FINGERPRINTS = {
    1: ("592ea67a19e290a0", "468ac172a096e7e8"),
    2: ("c3a70908b5359cd4", "468ac172a096e7e8"),
    3: ("c3a70908b5359cd4", "468ac172a096e7e8"),  # compact rows' norms: not in the dense fixed inputs
    4: ("c3a70908b5359cd4", "468ac172a096e7e8"),  # sparse sketch rows: not in the dense fixed inputs
    5: ("c3a70908b5359cd4", "468ac172a096e7e8"),  # sparse sums' order and norms: not in them either
    6: ("c3a70908b5359cd4", "468ac172a096e7e8"),  # compact rows' cell blocks: not in them either
    7: ("c823de8961941805", "468ac172a096e7e8"),  # 32 MiB pass blocks, 8 MiB blocks over formed products
}


def _outputs_hash() -> str:
    """The rules applied to fixed inputs: tokens and hashing, IDF, k-means, and the three modes."""
    idx, val = hashed_counts("The quick brown fox, jumps! Over 2 lazy dogs -- the end.")
    x = torch.from_numpy(clustered(300, seed=11, dim=32))
    y = torch.from_numpy(clustered(12, seed=12, centers=2, dim=32))
    ids = [f"c{i:04d}" for i in range(300)]
    keys = id_keys(ids)
    out: dict[str, Any] = {
        "counts": [idx.tolist(), val.tolist()],
        "idf": np.round(idf_from_df(np.array([0, 1, 3, 10]), 10), 5).tolist(),
        "kmeans": kmeans_labels(x, 4, keys=keys).tolist(),
    }
    config = SelectionConfig(summary_size=64, summary_cells=8)
    for mode in (Mode.EXACT, Mode.GLOBAL, Mode.PAPER):
        (ranked,) = rank(x, y, mode=mode, eps=0.1, k=30, ids=ids, config=config)
        out[mode.value] = [row for row, _ in ranked]
    return xxhash.xxh3_64_hexdigest(json.dumps(out, sort_keys=True).encode())


def test_rules_do_not_change_without_an_algorithm_version_bump() -> None:
    got = (rules_hash(), _outputs_hash())
    assert got == FINGERPRINTS.get(ALGORITHM_VERSION), (
        f"result rules changed: bump ALGORITHM_VERSION and record {got} in FINGERPRINTS"
    )


@pytest.mark.parametrize("field", ["paper_clusters", "seed", "project", "eps_scaling", "block_size"])
def test_each_fixed_field_of_the_config_changes_the_code_part(field: str) -> None:
    base = SelectionConfig()
    other = {"paper_clusters": 8, "seed": 1, "project": False, "eps_scaling": True, "block_size": 4096}[field]
    assert code_version(dataclasses.replace(base, **{field: other})) != code_version(base)


def test_code_part_is_the_version_and_the_rules() -> None:
    assert code_version().startswith(f"a{ALGORITHM_VERSION}.")
    assert set(result_rules()) >= {"sketch_buckets", "sketch_token", "kmeans", "relative_eps_rows"}


def _select(client: Client) -> tuple[list[tuple[str, float]], bool]:
    targets = clustered(20, seed=2, centers=2).tolist()
    ranked, summary = client.select("pool", targets, k=25, mode="exact")
    return [(c.id, c.score) for c in ranked], summary.cache_hit


@pytest.mark.parametrize(
    ("module", "name", "value"),
    [(sketches, "SKETCH_BUCKETS", 512), (blocks, "BLOCK_BYTES", 1 << 20)],
)
def test_a_changed_default_misses_the_cached_potential(
    server: BackgroundServer, monkeypatch: pytest.MonkeyPatch, module: Any, name: str, value: int
) -> None:
    with Client(server.address, timeout=120) as client:
        client.ingest("pool", vector_records(clustered(400, seed=1)), batch_size=200)
        first, hit = _select(client)
        assert not hit
        assert _select(client) == (first, True)
        before = algorithm.code_version()
        monkeypatch.setattr(module, name, value)
        assert algorithm.code_version() != before
        again, hit = _select(client)
        assert not hit, f"a potential cached before {name} changed was served"
        assert [cid for cid, _ in again] == [cid for cid, _ in first]
