"""The worker side of sharded scoring: shard plans, exact sums and the shard worker (no Ray import).

A shard is a row range of the pool made of whole c-transform blocks. Inside a worker the shard's
c-transform runs with the same block size as the single-process pass, so every GEMM has the same
shape and inputs as there and ``f`` is bit-identical (measured: splitting a pool at arbitrary rows
changes ``f`` in the last bits for some target counts, because the BLAS picks kernels by shape).

The calibrated gradient needs the mean of ``f`` over the whole pool. Each shard returns the exact
sum of its ``f`` as an integer times a power of two (:class:`ExactSum`); the driver adds them exactly
and rounds once, which is what :func:`math.fsum` over all of ``f`` gives. Every shard then computes the
same scores as :func:`gotd.server.ot.gradient.calibrated_gradient` would, and its local top-k.

References
----------
.. [1] F. Kang et al., "Get more for less: Principled Data Selection for Warming Up Fine-Tuning in
   LLMs", ICLR 2024.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gotd.server.ot.blocks import BLOCK_BYTES
from gotd.server.ot.exact import ExactSum
from gotd.server.ot.rows import Rows, StackedRows
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.topk import top_k

__all__ = ["PassSpec", "ShardWorker", "block_rows", "plan_shards", "scores_from_f"]

LOG = logging.getLogger(__name__)


def block_rows(m: int, itemsize: int = 4, block_size: int | None = None) -> int:
    """Rows per block of :func:`gotd.server.ot.sinkhorn.c_transform` for ``m`` targets (its default rule)."""
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size!r}")
        return block_size
    return max(1, BLOCK_BYTES // (m * itemsize))


def plan_shards(n: int, rows_per_block: int, shards: int) -> list[tuple[int, int]]:
    """Split rows ``[0, n)`` into at most ``shards`` contiguous ranges of whole blocks (balanced)."""
    if n < 1 or rows_per_block < 1 or shards < 1:
        raise ValueError(f"need n, rows_per_block, shards >= 1, got {n}, {rows_per_block}, {shards}")
    blocks = -(-n // rows_per_block)
    count = min(shards, blocks)
    cuts = [min(n, (blocks * i // count) * rows_per_block) for i in range(count + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def scores_from_f(f: torch.Tensor, total: float, n: int) -> np.ndarray:
    """Calibrated gradient of a shard's ``f`` given the exact pool sum ``total`` of ``n`` values.

    The same element-wise float64 formula as :func:`gotd.server.ot.gradient.calibrated_gradient`, so the
    scores equal the single-process ones bit for bit.
    """
    if n < 2:
        return f.detach().clone().numpy()
    f64 = f.detach().to(torch.float64)
    return (f64 - (total - f64) / (n - 1)).to(f.dtype).numpy()


@dataclass(frozen=True, slots=True)
class PassSpec:
    """What one sharded pass computes: ``f`` of ``g`` for the target set ``y_key``, ``eps``, block ``rows``.

    ``name`` digests all of it (and the snapshot): a worker keeps a shard's values under it, so a
    second round of the same pass (more candidates, chosen rows) reads them instead of scoring again.
    """

    name: str
    y_key: str
    y_ref: list[Any]  # [ObjectRef] of the target set (nested: fetched only when not held)
    g_ref: list[Any]  # [ObjectRef] of g (nested: fetched only when the values are not kept)
    eps: float
    rows: int


@dataclass(slots=True)
class _Shard:
    start: int
    x: Rows
    ids: list[str] | None


class ShardWorker:
    """Holds pool shards and scores them; run as a Ray actor with one torch thread.

    Shards are kept per key (snapshot, block rows, shard number) in an LRU of ``capacity`` entries;
    target sets per content key in a small LRU, fetched from the object store only when new, so a
    repeated request moves only ``g``. The values ``f`` of the last ``passes`` (shard, pass) pairs stay
    in the worker (4 bytes a row): the rounds of one pass, and a repeated pass, score nothing again.
    """

    def __init__(self, threads: int = 1, capacity: int = 64, targets: int = 4, passes: int = 64) -> None:
        torch.set_num_threads(threads)
        self._shards: OrderedDict[str, _Shard] = OrderedDict()
        self._targets: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._values: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._capacity = capacity
        self._target_capacity = targets
        self._pass_capacity = passes

    def ping(self) -> int:
        return torch.get_num_threads()

    def hold(self, key: str, start: int, x: np.ndarray | StackedRows, ids: Sequence[str] | None) -> int:
        """Keep a private copy of shard rows ``x`` (first row ``start``); returns its bytes.

        Compact rows (float16 embeddings, fused parts) stay compact and are scored block by block
        exactly as in process.
        """
        rows = torch.from_numpy(np.array(x, dtype=x.dtype, order="C")) if isinstance(x, np.ndarray) else x
        shard = _Shard(start, rows, None)
        shard.ids = None if ids is None else list(ids)
        self._shards[key] = shard
        self._shards.move_to_end(key)
        while len(self._shards) > self._capacity:
            self._shards.popitem(last=False)
        for kept in [v for v in self._values if v[0] == key]:
            del self._values[kept]  # values of rows this key named before
        if isinstance(shard.x, StackedRows):
            return shard.x.nbytes
        return int(shard.x.numel() * shard.x.element_size())

    def holds(self, keys: Sequence[str]) -> list[bool]:
        return [k in self._shards for k in keys]

    def drop(self, prefix: str) -> int:
        """Forget every shard whose key starts with ``prefix`` (and its kept values)."""
        gone = [k for k in self._shards if k.startswith(prefix)]
        for k in gone:
            del self._shards[k]
        for kept in [v for v in self._values if v[0].startswith(prefix)]:
            del self._values[kept]
        return len(gone)

    def _shard(self, key: str) -> _Shard:
        shard = self._shards.get(key)
        if shard is None:
            raise LookupError(f"shard {key!r} is not held by this worker")
        return shard

    def _target(self, key: str, ref: list[Any]) -> torch.Tensor:
        y = self._targets.get(key)
        if y is None:
            import ray  # the worker runs under Ray; the target set is fetched once per key

            y = torch.from_numpy(np.array(ray.get(ref[0]), order="C"))
            self._targets[key] = y
            while len(self._targets) > self._target_capacity:
                self._targets.popitem(last=False)
        self._targets.move_to_end(key)
        return y

    def _f(
        self, key: str, y_key: str, y_ref: list[Any], g: np.ndarray, eps: float, rows: int
    ) -> torch.Tensor:
        shard = self._shard(key)
        y = self._target(y_key, y_ref)
        return c_transform(shard.x, y, torch.from_numpy(np.array(g)), eps=eps, block_size=rows)

    def _values_of(self, key: str, spec: PassSpec) -> torch.Tensor:
        """The shard's ``f`` for ``spec``: kept from an earlier round, else scored now and kept."""
        name = (key, spec.name)
        f = self._values.get(name)
        if f is None:
            import ray

            f = self._f(key, spec.y_key, spec.y_ref, ray.get(spec.g_ref[0]), spec.eps, spec.rows)
            self._values[name] = f
            while len(self._values) > self._pass_capacity:
                self._values.popitem(last=False)
        self._values.move_to_end(name)
        return f

    def f(self, key: str, y_key: str, y_ref: list[Any], g: np.ndarray, eps: float, rows: int) -> np.ndarray:
        """The c-transform ``f`` of ``g`` over the shard (all of it goes back: 4 bytes a row)."""
        return self._f(key, y_key, y_ref, g, eps, rows).numpy()

    def f_sum(self, key: str, spec: PassSpec) -> ExactSum:
        """Score the shard for ``spec`` (values kept in the worker); return only their exact sum."""
        return ExactSum.of(self._values_of(key, spec).numpy())

    def top_k(
        self, key: str, spec: PassSpec, total: float, n: int, k: int | None, ineligible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shard's best ``k`` rows by calibrated gradient (ties by id, else row), in rank order.

        ``total`` is the exact pool sum of ``f`` over ``n`` rows; pool rows in ``ineligible`` (sorted,
        within the shard) are never returned. Returns pool row numbers (int64) and their scores (in
        ``f``'s dtype): 12 bytes a pair.
        """
        shard = self._shard(key)
        scores = scores_from_f(self._values_of(key, spec), total, n)
        eligible = None
        if len(ineligible):
            eligible = np.ones(len(scores), dtype=bool)
            eligible[np.asarray(ineligible, dtype=np.int64) - shard.start] = False
        best = top_k(scores, k, ids=shard.ids, eligible=eligible)
        rows = np.fromiter((shard.start + r for r, _ in best), dtype=np.int64, count=len(best))
        return rows, scores[rows - shard.start]

    def at(self, key: str, spec: PassSpec, total: float, n: int, rows: np.ndarray) -> np.ndarray:
        """Scores (calibrated gradient, ``f``'s dtype) of the pool rows ``rows`` of this shard."""
        shard = self._shard(key)
        f = self._values_of(key, spec)[torch.from_numpy(np.asarray(rows, dtype=np.int64) - shard.start)]
        return scores_from_f(f, total, n)
