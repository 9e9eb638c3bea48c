"""The code part of a dual-cache key: an explicit algorithm version plus every rule behind the numbers.

A cached target potential may only serve code that would compute the same numbers. The request
parts of a key (pool, target, cost, mode, epsilon, tolerance, ...) are named by the engine; what is
left is fixed in the code: defaults no request sets (paper-mode cluster count and seed, projection,
epsilon scaling, block sizes), the sketch and IDF rules, the summary rules. :func:`code_version`
renders them as ``a<ALGORITHM_VERSION>.<hash>``: changing any such default changes the key (a miss,
never a stale hit), and ``tests/test_algorithm_version.py`` freezes the hash of the defaults and of the
rules' outputs on fixed inputs, so a change that alters the numbers fails until
:data:`ALGORITHM_VERSION` is bumped and the new fingerprint recorded.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from typing import Any, Final

import xxhash

from gotd.server.ot import blocks, sinkhorn
from gotd.server.selection import config as selection_config
from gotd.server.selection import costs, kmeans, sketches
from gotd.server.selection.config import SelectionConfig

__all__ = ["ALGORITHM_VERSION", "code_version", "result_rules"]

ALGORITHM_VERSION: Final = 7
"""Bump whenever a rule that shapes a potential or a score changes (the fingerprint test says when).

2: a dense solve forms its cross products once (``FORMED_COST_BYTES``) and the summary's cells are
assigned part by part from compact rows (float rounding: top-5% overlap >= 0.999 held by a test).
3: the squared norms of compact rows are summed part by part (the fused cost's scores change by float
rounding; the fingerprint's small dense inputs do not see it, so its pair is version 2's).
4: a snapshot keeps its sketch rows sparse and the fused cost sums their products, squared norms and
inverse norms entry by entry (``embedding_bag``): the fused cost's potentials and scores change by
float rounding (the fingerprint's dense inputs do not see it).
5: a sparse part opens a block's accumulator (its sums first, then the embedding GEMM) and sums its
squared norms as squared entries times squared column factors: float rounding of the fused cost.
6: the summary's cells are assigned over compact rows in blocks sized by their dense columns alone
(larger blocks for the fused cost: its GEMMs' rounding, so a tie may fall otherwise)."""

#: SelectionConfig fields a request never sets: they reach the key only through :func:`code_version`.
_FIXED_FIELDS: Final = ("paper_clusters", "seed", "project", "eps_scaling", "block_size")


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``function`` that are plain values (rules a caller does not pass)."""
    out: dict[str, Any] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        default = parameter.default
        if default is not inspect.Parameter.empty and isinstance(default, bool | int | float | str):
            out[name] = default
    return out


def result_rules(config: SelectionConfig | None = None) -> dict[str, Any]:
    """Every fixed default behind a potential or a score that the key's request parts do not name.

    Parameters
    ----------
    config : SelectionConfig or None
        The request's resolved configuration (its fixed fields are read from it); None: the defaults.

    Returns
    -------
    dict
        JSON-serialisable, read from the modules at call time.
    """
    cfg = config if config is not None else SelectionConfig()
    return {
        "config_defaults": {
            f.name: f.default
            for f in dataclasses.fields(SelectionConfig)
            if isinstance(f.default, bool | int | float | str | type(None))
        },
        "fixed": {name: getattr(cfg, name) for name in _FIXED_FIELDS},
        "block_bytes": blocks.BLOCK_BYTES,
        "eps_scaling_start": sinkhorn.EPS_SCALING_START,
        "formed_cost_bytes": sinkhorn.FORMED_COST_BYTES,
        "formed_block_bytes": sinkhorn.FORMED_BLOCK_BYTES,
        "relative_eps_rows": selection_config.RELATIVE_EPS_ROWS,
        "summary_size": selection_config.DEFAULT_SUMMARY_SIZE,
        "sinkhorn": _defaults(sinkhorn.sinkhorn),
        "kmeans": _defaults(kmeans.kmeans_labels),
        "sketch_buckets": sketches.SKETCH_BUCKETS,
        "sketch_token": sketches._TOKEN.pattern,  # the tokenizer is a result rule too
        "sketch_counts": _defaults(sketches.hashed_counts),
        "embedding_weight": costs.DEFAULT_EMBEDDING_WEIGHT,
    }


def rules_hash(config: SelectionConfig | None = None) -> str:
    """xxh3_64 hex digest of :func:`result_rules` (canonical JSON)."""
    text = json.dumps(result_rules(config), sort_keys=True, separators=(",", ":"))
    return xxhash.xxh3_64_hexdigest(text.encode())


def code_version(config: SelectionConfig | None = None) -> str:
    """The ``code`` part of a dual-cache key: ``a<ALGORITHM_VERSION>.<rules_hash>``."""
    return f"a{ALGORITHM_VERSION}.{rules_hash(config)}"
