"""Ray as gotd's scale-out backend: sharded scoring of a pool against a target potential.

The pool is split into shards of whole c-transform blocks (by row range) held by worker actors, one
torch thread each. A request puts ``g`` into the object store once; every worker computes the
c-transform of its shards. :meth:`RayScorer.open_pass` (the engine's path) keeps the values in the workers
and returns a :class:`~gotd.server.ray.sharded.ShardedPass`: the exact total, then each shard's top-k
(or chosen rows' scores) on demand; :meth:`RayScorer.rank` and :func:`sharded_rank` merge the top-ks
into the global ranking, identical to the single-process ``top_k(calibrated_gradient(c_transform(x, y,
g)))`` (same ids, same order, same scores). ``RayScorer(...)`` as a callable returns all of ``f``.

Shards stay in the workers per snapshot (pool, uid, version, rows), and target sets per content
hash, so a repeated request ships only ``g`` (``4 m`` bytes) and gets back ``k`` pairs per shard.
Distributed ingest lives in :mod:`gotd.server.ray.ingest`. Ray is the optional extra ``gotd[ray]``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import xxhash

from gotd.server.ot.exact import ExactSum
from gotd.server.ot.rows import Rows, block
from gotd.server.ray.runtime import (
    RequestBytes,
    content_key,
    init_ray,
    int_bytes,
    lost_shard,
    require_ray,
)
from gotd.server.ray.shard import PassSpec, ShardWorker, block_rows, plan_shards
from gotd.server.ray.sharded import ShardArgs, ShardCall, ShardedPass
from gotd.server.selection.scoring import ScorePass

__all__ = ["RayScorer", "RequestBytes", "ShardedPass", "init_ray", "require_ray", "sharded_rank"]

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class _Placement:
    ranges: list[tuple[int, int]]
    owners: list[int]
    keys: list[str]
    with_ids: bool


class RayScorer:
    """Scores pool rows on Ray workers; a :class:`gotd.server.selection.scoring.Scorer` for the engine.

    Parameters
    ----------
    address : str or None
        Ray cluster address (``"auto"``, ``"ray://host:10001"``, ...); None starts a local Ray
        when none is running. A Ray started here is shut down by :meth:`close`.
    workers : int
        Worker actors, one CPU and one torch thread each.
    shards : int or None
        Shards per pool (default ``4 * workers``), capped by the pool's number of blocks.
    snapshots : int
        Pool snapshots kept in the workers (least recently used dropped first).
    block_size : int or None
        The c-transform block size of the single-process pass to reproduce (None: its default).
    num_cpus, object_store_memory : int or None
        Only when a local Ray is started here.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int = 2,
        shards: int | None = None,
        snapshots: int = 2,
        block_size: int | None = None,
        num_cpus: int | None = None,
        object_store_memory: int | None = None,
    ) -> None:
        ray = require_ray()
        if workers < 1 or snapshots < 1 or (shards is not None and shards < 1):
            raise ValueError(
                f"workers, snapshots and shards must be >= 1, got {workers}, {snapshots}, {shards}"
            )
        self._ray = ray
        self._owns_ray = init_ray(address, num_cpus=num_cpus, object_store_memory=object_store_memory)
        self._block_size = block_size
        self._shards = shards or 4 * workers
        self._snapshots = snapshots
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(ShardWorker)
        self._workers = [actor.remote(1) for _ in range(workers)]
        ray.get([w.ping.remote() for w in self._workers])
        self._placed: OrderedDict[str, _Placement] = OrderedDict()
        self._targets: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.last = RequestBytes()

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (and the local Ray this scorer started)."""
        for w in self._workers:
            self._ray.kill(w)
        self._workers = []
        self._placed.clear()
        self._targets.clear()
        if self._owns_ray:
            self._ray.shutdown()

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Scorer -------------------------------------------------------------------------------------
    def __call__(self, work: ScorePass, /) -> torch.Tensor:
        """The c-transform ``f`` (n,) of ``g`` over ``x``, computed shard by shard on the workers."""
        layout = (self._shards, block_rows(work.y.shape[0], work.x.element_size(), self._block_size))
        return self._with_retry(lambda: self._f(work, layout), work.snapshot)

    def open_pass(
        self,
        work: ScorePass,
        ids: Sequence[str] | None,
        /,
        *,
        shards: int | None = None,
        block_size: int | None = None,
    ) -> ShardedPass:
        """Score ``work`` on the workers, keeping the values there; the exact total comes back.

        The returned :class:`~gotd.server.ray.sharded.ShardedPass` answers top-k and chosen-row
        questions from the workers' kept values (``ids`` break ties; the shards hold them).
        ``shards`` and ``block_size`` override the scorer's for this call; ``work.callback(done, n)``
        follows shard completions.
        """
        x, y, key = work.x, work.y, work.snapshot
        if ids is not None and len(ids) != x.shape[0]:
            raise ValueError(f"ids must have length {x.shape[0]}, got {len(ids)}")
        layout = (
            shards or self._shards,
            block_rows(y.shape[0], x.element_size(), block_size or self._block_size),
        )
        stats = RequestBytes()
        _, y_key, y_ref, g_ref = self._with_retry(lambda: self._ship(work, ids, layout, stats), key)
        digest = xxhash.xxh3_128()
        g_bytes = work.g.detach().to(x.dtype).cpu().numpy().tobytes()
        for part in (key, y_key, repr((float(work.eps), layout)), g_bytes):
            digest.update(part.encode() if isinstance(part, str) else part)
        spec = PassSpec(digest.hexdigest(), y_key, [y_ref], [g_ref], float(work.eps), layout[1])
        placer = lambda: self._place(x, ids, key, layout, stats)  # noqa: E731
        call: ShardCall = lambda method, args: self._each_shard(placer, key, method, args)  # noqa: E731
        sums = self._each_shard(placer, key, "f_sum", lambda _a, _b: (spec,), work.callback)
        stats.received += sum(int_bytes(s.mantissa) + 8 for s in sums)
        self.last = stats
        return ShardedPass(call, spec, x.shape[0], sum(sums, ExactSum(0, 0)), ids, stats)

    def rank(
        self,
        x: Rows,
        y: torch.Tensor,
        g: torch.Tensor,
        *,
        eps: float,
        k: int | None,
        ids: Sequence[str] | None,
        snapshot: str | None = None,
        shards: int | None = None,
        block_size: int | None = None,
    ) -> list[tuple[int, float]]:
        """The global top-``k`` ``(row, score)`` pairs merged from each shard's local top-k.

        Two rounds (:meth:`open_pass`, then :meth:`ShardedPass.top`): the workers compute ``f`` and return
        its exact sum; the driver adds the sums exactly (the calibrated gradient's mean); the workers
        then score and return their top-k.
        """
        if k is not None and k < 0:
            raise ValueError(f"k must be >= 0 or None, got {k!r}")
        key = snapshot if snapshot is not None else content_key(block(x, 0, x.shape[0]), ids)
        work = ScorePass(x, y, g, eps, key, lambda _done, _n: None)
        run = self.open_pass(work, ids, shards=shards, block_size=block_size)
        return run.top(k)

    # -- internals ---------------------------------------------------------------------------------
    def _with_retry(self, run: Callable[[], T], snapshot: str, attempts: int = 3) -> T:
        """Run; when a worker lost its shards (it died and restarted), place them again and rerun."""
        for attempt in range(1, attempts + 1):
            try:
                return run()
            except self._ray.exceptions.RayError as err:
                if not lost_shard(err) or attempt == attempts:
                    raise
                LOG.warning(
                    "ray scorer: a worker lost its shards (%s); placing them again", type(err).__name__
                )
                with self._lock:
                    for name in [n for n in self._placed if n.startswith(snapshot + "|")]:
                        del self._placed[name]
                self._await_workers()
        raise AssertionError("unreachable")

    def _await_workers(self, timeout: float = 120.0) -> None:
        """Wait until every worker answers (a restarting one refuses calls for a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._ray.get([w.ping.remote() for w in self._workers], timeout=timeout)
                return
            except self._ray.exceptions.RayError as err:
                if not lost_shard(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _ship(
        self, work: ScorePass, ids: Sequence[str] | None, layout: tuple[int, int], stats: RequestBytes
    ) -> tuple[_Placement, str, Any, Any]:
        """What a request needs in the object store: the placed shards, the target set and ``g``."""
        place = self._place(work.x, ids, work.snapshot, layout, stats)
        y_key, y_ref = self._target(work.y, stats)
        return place, y_key, y_ref, self._put_g(work.g, work.x.dtype, stats)

    def _put_g(self, g: torch.Tensor, dtype: torch.dtype, stats: RequestBytes) -> Any:
        arr = g.detach().to(dtype).cpu().numpy()
        stats.sent += arr.nbytes
        return self._ray.put(arr)

    def _f(self, work: ScorePass, layout: tuple[int, int]) -> torch.Tensor:
        stats = RequestBytes()
        place, y_key, y_ref, g_ref = self._ship(work, None, layout, stats)
        futures = [
            self._workers[o].f.remote(key, y_key, [y_ref], g_ref, work.eps, layout[1])
            for o, key in zip(place.owners, place.keys, strict=True)
        ]
        f = np.concatenate(self._gather(futures, place.ranges, work.callback))
        stats.received += f.nbytes
        self.last = stats
        return torch.from_numpy(f)

    def _each_shard(
        self,
        placer: Callable[[], _Placement],
        snapshot: str,
        method: str,
        args: ShardArgs,
        callback: Callable[[int, int], None] | None = None,
    ) -> list[Any]:
        """``method(key, *args(start, stop))`` on each shard's worker (None args: skipped), shard order."""

        def run() -> list[Any]:
            place = placer()
            calls = [args(a, b) for a, b in place.ranges]
            futures = [
                None if extra is None else getattr(self._workers[o], method).remote(key, *extra)
                for o, key, extra in zip(place.owners, place.keys, calls, strict=True)
            ]
            return self._gather(futures, place.ranges, callback)

        return self._with_retry(run, snapshot)

    def _gather(
        self,
        futures: Sequence[Any | None],
        ranges: Sequence[tuple[int, int]],
        callback: Callable[[int, int], None] | None,
    ) -> list[Any]:
        """Results in shard order, ``callback(rows done, n)`` as shards finish (it may raise to stop)."""
        results: list[Any] = [None] * len(futures)
        index = {id(ref): i for i, ref in enumerate(futures) if ref is not None}
        pending = [ref for ref in futures if ref is not None]
        n, done = (ranges[-1][1] if ranges else 0), 0
        try:
            while pending:
                ready, pending = self._ray.wait(pending, num_returns=1)
                i = index[id(ready[0])]
                results[i] = self._ray.get(ready[0])
                done += ranges[i][1] - ranges[i][0]
                if callback is not None:
                    callback(done, n)
        except BaseException:
            for ref in pending:
                self._ray.cancel(ref)
            raise
        return results

    def _place(
        self,
        x: Rows,
        ids: Sequence[str] | None,
        snapshot: str,
        layout: tuple[int, int],
        stats: RequestBytes,
    ) -> _Placement:
        """The shards of ``snapshot`` in a ``(shards, block rows)`` layout, shipped to the workers once."""
        shards, rows = layout
        name = f"{snapshot}|{rows}|{shards}"
        with self._lock:
            place = self._placed.get(name)
            if place is not None and (place.with_ids or ids is None):
                self._placed.move_to_end(name)
                return place
            ranges = plan_shards(x.shape[0], rows, shards)
            owners = [i % len(self._workers) for i in range(len(ranges))]
            keys = [f"{name}|{i}" for i in range(len(ranges))]
            acks = []
            for (a, b), o, key in zip(ranges, owners, keys, strict=True):
                shard_ids = None if ids is None else [str(i) for i in ids[a:b]]
                part = x[a:b].detach().cpu().numpy() if isinstance(x, torch.Tensor) else x.span(a, b)
                acks.append(self._workers[o].hold.remote(key, a, part, shard_ids))
            stats.sent += sum(self._ray.get(acks))
            stats.shards_shipped = len(ranges)
            place = _Placement(ranges, owners, keys, ids is not None)
            self._placed[name] = place
            while len(self._placed) > self._snapshots:
                old, _ = self._placed.popitem(last=False)
                for w in self._workers:
                    w.drop.remote(old + "|")
            LOG.info(
                "ray scorer: placed %s as %d shards on %d workers", snapshot, len(ranges), len(self._workers)
            )
            return place

    def _target(self, y: torch.Tensor, stats: RequestBytes) -> tuple[str, Any]:
        """Content key and object-store reference of the target set (put once per content)."""
        arr = np.ascontiguousarray(y.detach().cpu().numpy())
        key = xxhash.xxh3_128_hexdigest(arr.tobytes()) + f":{arr.shape}:{arr.dtype}"
        with self._lock:
            ref = self._targets.get(key)
            if ref is None:
                ref = self._ray.put(arr)
                stats.sent += arr.nbytes
                self._targets[key] = ref
                while len(self._targets) > 4:
                    self._targets.popitem(last=False)
            self._targets.move_to_end(key)
        return key, ref


def sharded_rank(
    x: Rows,
    y: torch.Tensor,
    g: torch.Tensor,
    *,
    eps: float,
    k: int | None,
    ids: Sequence[str] | None,
    shards: int,
    scorer: RayScorer | None = None,
    block_size: int | None = None,
) -> list[tuple[int, float]]:
    """Global ranking from shard top-ks: equals ``top_k(calibrated_gradient(c_transform(x, y, g)))``.

    ``x`` (n, d) and ``y`` (m, d) float32 or float64, ``g`` (m,); ``k`` rows (None: all); ``ids`` break
    ties (else rows); ``shards`` row ranges of whole blocks of ``block_size`` rows (default: the
    in-process default). ``scorer``: workers to use (their placed shards are reused); default
    ``shards`` workers (capped by the cluster's CPUs) started for this call. Returns ``(row, score)``
    in rank order: ascending score, ties by id.
    """
    if scorer is not None:
        return scorer.rank(x, y, g, eps=eps, k=k, ids=ids, shards=shards, block_size=block_size)
    ray = require_ray()
    started = init_ray(None)
    try:
        cpus = max(1, int(ray.available_resources().get("CPU", 1)))
        with RayScorer(workers=min(shards, cpus), shards=shards, block_size=block_size) as own:
            return own.rank(x, y, g, eps=eps, k=k, ids=ids)
    finally:
        if started:
            ray.shutdown()
