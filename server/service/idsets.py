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

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Final

from gotd.cache.errors import InvalidArgument, ResourceExhausted
from gotd.cache.records import validate_id
from gotd.cache.store.idsets import IdSetInfo, IdSets
from gotd.server.service.requests import SelectParams

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "SelectIdSets"]

#: Ids of a GetIdSet page when the request sets no page size, and the most a page holds.
DEFAULT_PAGE_SIZE: Final = 10_000
MAX_PAGE_SIZE: Final = 100_000
_TOKEN_TAG: Final = b"ids1:"  # names the token's form, so another form is rejected, not misread


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

    def page(self, pool: str, name: str, page_size: int, page_token: str) -> tuple[IdSetInfo, list[str], str]:
        """One page of the set's sorted ids and the token of the next ("" after the last page).

        ``page_size`` 0 is :data:`DEFAULT_PAGE_SIZE`, larger than :data:`MAX_PAGE_SIZE` is that,
        negative is InvalidArgument; the token is the page's last id (URL-safe base64 of a tagged
        form), and one that does not decode to an id is InvalidArgument."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        info, ids, more = self.sets.page(pool, name, after=_after(page_token), limit=size)
        token = base64.urlsafe_b64encode(_TOKEN_TAG + ids[-1].encode("utf-8")).decode() if more else ""
        return info, ids, token

    def record(self, pool: str, name: str, ids: Sequence[str], stop: Callable[[], None]) -> tuple[int, int]:
        """Add the returned ``ids`` to the set ``name`` (created when absent) in one write transaction,
        unless the call was cancelled or its deadline passed (``stop`` raises). Returns the ids added
        and the set's count after."""
        stop()
        info, added = self.sets.put(pool, name, ids, append=True)
        return added, info.count


def _after(token: str) -> str | None:
    """The last id of the previous page named by ``token`` (None for the first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        if not raw.startswith(_TOKEN_TAG):
            raise ValueError("not a page token")
        return validate_id(raw[len(_TOKEN_TAG) :].decode("utf-8"))
    except (ValueError, binascii.Error, InvalidArgument):  # UnicodeError is a ValueError
        why = "page_token is not a token of GetIdSet; start again from the first page"
        raise InvalidArgument(why) from None
