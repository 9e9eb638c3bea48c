"""Id sets around a Select: the exclusion set is read before any work, the returned ids recorded after.

What "returned" means for a streamed Select: the ids of every ranked batch the server has handed to
gRPC. The servicer records them (:meth:`SelectIdSets.record`) once the last batch has been sent and
before the Summary, in one LMDB write transaction. A Select that fails, is cancelled or passes its
deadline before that point records nothing. One window stays open, as with any stream without an
acknowledgement from the client: a client that goes away after the last batch was sent but before it
read the Summary may find the ids recorded (the Summary's ``recorded`` count confirms a record; without
a Summary, ``GetIdSet`` tells). Two Selects recording into the same set at the same time are not
serialised: each excludes the set as it was when it started.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gotd.cache.errors import ResourceExhausted
from gotd.cache.store.idsets import IdSets
from gotd.server.service.requests import SelectParams

__all__ = ["SelectIdSets"]


class SelectIdSets:
    """The id-set options of Select requests (``exclude_set``, ``record_into``) over the store's sets."""

    def __init__(self, sets: IdSets) -> None:
        self.sets = sets

    def excluded(self, params: SelectParams) -> frozenset[str]:
        """The ids of the request's ``exclude_set``: empty without one, or when it is absent and the
        same set is ``record_into`` (the first round of a loop); NotFound when it is absent otherwise."""
        if not params.exclude_set:
            return frozenset()
        if (
            params.exclude_set == params.record_into
            and self.sets.info(params.pool, params.exclude_set) is None
        ):
            return frozenset()
        _info, ids = self.sets.get(params.pool, params.exclude_set)
        return frozenset(ids)

    def check_record(self, params: SelectParams, pool_size: int) -> None:
        """RESOURCE_EXHAUSTED before any work when what the Select may return could overflow the
        ``record_into`` set (its count plus min(k, pool size) over the limit)."""
        if not params.record_into:
            return
        info = self.sets.info(params.pool, params.record_into)
        count = 0 if info is None else info.count
        if count + min(params.k, pool_size) > self.sets.max_ids:
            raise ResourceExhausted(
                f"id set {params.record_into!r} holds {count} ids: recording up to "
                f"{min(params.k, pool_size)} more could exceed the limit of {self.sets.max_ids}"
            )

    def record(self, pool: str, name: str, ids: Sequence[str], stop: Callable[[], None]) -> tuple[int, int]:
        """Add the returned ``ids`` to the set ``name`` (created when absent) in one write transaction,
        unless the call was cancelled or its deadline passed (``stop`` raises). Returns the ids added
        and the set's count after."""
        stop()
        info, added = self.sets.put(pool, name, ids, append=True)
        return added, info.count
