"""Named id sets over a real server, Redis and LMDB: stored per pool, excluded from a Select, and the ids a
Select returns recorded into one atomically with it (a Select that fails records nothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.demo import BackgroundServer
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc
from tests.conftest import clustered, vector_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 300
TARGETS = clustered(20, seed=2, centers=2).tolist()
PLAIN = {"mode": "exact", "near_copy_cosine": 0.0}  # plain top-k: a walk does not depend on exclusions


def _fill(client: Client) -> None:
    client.ingest("pool", vector_records(clustered(N, seed=1)))


def _select(client: Client, k: int, **kwargs: Any) -> tuple[list[RankedCandidate], SelectSummary]:
    return client.select("pool", TARGETS, k=k, **{**PLAIN, **kwargs})


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


def test_put_get_list_delete(client: Client) -> None:
    _fill(client)
    info, added = client.put_id_set("pool", "seen", ["b", "a", "b", "c"])
    assert (info.pool, info.name, info.count, added) == ("pool", "seen", 3, 3)
    info, added = client.put_id_set("pool", "seen", ["c", "d"], append=True)
    assert (info.count, added) == (4, 1)
    assert client.get_id_set("pool", "seen")[1] == ["a", "b", "c", "d"]
    client.put_id_set("pool", "other", ["x"])
    client.put_id_set("pool", "empty", [])
    assert [(s.name, s.count) for s in client.id_sets("pool")] == [("empty", 0), ("other", 1), ("seen", 4)]
    info, added = client.put_id_set("pool", "seen", ["z"])  # replace
    assert (info.count, added) == (1, 1)
    assert client.get_id_set("pool", "seen")[1] == ["z"]
    client.delete_id_set("pool", "seen")
    assert _code(lambda: client.get_id_set("pool", "seen")) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.delete_id_set("pool", "seen")) == grpc.StatusCode.NOT_FOUND
    assert [s.name for s in client.id_sets("pool")] == ["empty", "other"]
    # a deleted pool takes its sets along; a new pool of the same name starts without any
    client.delete_pool("pool")
    _fill(client)
    assert client.id_sets("pool") == []


def test_exclude_set_equals_exclude_ids(client: Client) -> None:
    _fill(client)
    full, _ = _select(client, N)
    used = [c.id for c in full[:7]] + [c.id for c in full[50:53]] + ["not-in-pool"]
    client.put_id_set("pool", "used", used)
    by_ids, _ = _select(client, 40, exclude_ids=used)
    by_set, s_set = _select(client, 40, exclude_set="used")
    assert [(c.id, c.score) for c in by_set] == [(c.id, c.score) for c in by_ids]
    assert [c.id for c in by_set] == [c.id for c in full if c.id not in used][:40]
    assert (s_set.excluded_by_set, s_set.eligible) == (10, N - 10)
    assert s_set.recorded == 0
    # both at once: the union is excluded
    both, s_both = _select(client, 40, exclude_set="used", exclude_ids=[full[7].id])
    assert [c.id for c in both] == [c.id for c in full if c.id not in {*used, full[7].id}][:40]
    assert s_both.eligible == N - 11


def test_consecutive_selects_exclude_and_record_are_disjoint(client: Client) -> None:
    _fill(client)
    k = 25
    top, _ = _select(client, 2 * k)
    loop = {"exclude_set": "given", "record_into": "given"}
    first, s1 = _select(client, k, **loop)  # the set does not exist yet: created by this Select
    second, s2 = _select(client, k, **loop)
    assert [c.id for c in first] == [c.id for c in top[:k]]
    assert [c.id for c in second] == [c.id for c in top[k:]]
    assert [c.score for c in first + second] == [c.score for c in top]
    assert (s1.recorded, s1.record_set_count, s2.recorded, s2.record_set_count) == (k, k, k, 2 * k)
    assert s2.excluded_by_set == k
    assert client.get_id_set("pool", "given")[1] == sorted(c.id for c in top)


def test_record_into_existing_set_adds_only_new_ids(client: Client) -> None:
    _fill(client)
    top, _ = _select(client, 10)
    client.put_id_set("pool", "log", [top[0].id, "elsewhere"])
    _, s = _select(client, 10, record_into="log")
    assert (s.recorded, s.record_set_count) == (9, 11)
    assert client.get_id_set("pool", "log")[1] == sorted({c.id for c in top} | {"elsewhere"})


def test_a_failed_select_records_nothing(client: Client, make_server: Any) -> None:
    _fill(client)
    bad_eps = {"eps": -1.0, "record_into": "log"}
    assert _code(lambda: _select(client, 5, **bad_eps)) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = {"exclude_set": "nope", "record_into": "log"}
    assert _code(lambda: _select(client, 5, **unknown)) == grpc.StatusCode.NOT_FOUND
    assert client.id_sets("pool") == []
    # a set at its limit: refused before any work, the set unchanged
    small = make_server(max_id_set_ids=12)
    with Client(small.address, timeout=120) as c:
        _fill(c)
        c.put_id_set("pool", "log", [f"x{i}" for i in range(10)])
        assert _code(lambda: _select(c, 5, record_into="log")) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.get_id_set("pool", "log")[0].count == 10
        too_many = [f"y{i}" for i in range(13)]
        assert _code(lambda: c.put_id_set("pool", "log", too_many)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _code(lambda: c.put_id_set("pool", "log", too_many[:3], append=True)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert c.get_id_set("pool", "log")[1] == sorted(f"x{i}" for i in range(10))


def test_the_record_limit_counts_live_candidates(make_server: Any) -> None:
    small = make_server(max_id_set_ids=12)
    with Client(small.address, timeout=120) as c:
        c.ingest("pool", vector_records(clustered(4, seed=1)))
        c.delete_records("pool", ["c00000", "c00001"])
        c.put_id_set("pool", "log", [f"x{i}" for i in range(10)])
        # 10 ids + min(k = 5, 2 live candidates) fits the limit of 12; the deleted rows do not count
        ranked, summary = _select(c, 5, record_into="log")
        assert sorted(r.id for r in ranked) == ["c00002", "c00003"]
        assert (summary.recorded, summary.record_set_count) == (2, 12)


def test_a_cancelled_stream_records_nothing(client: Client, server: BackgroundServer) -> None:
    _fill(client)
    request = pb.SelectRequest(
        pool="pool",
        target=pb.TargetSpec(
            records=pb.TargetRecords(
                records=[pb.Record(id=f"t{i}", embedding=v) for i, v in enumerate(TARGETS)]
            )
        ),
        k=N,
        mode=pb.SELECTION_MODE_EXACT,
        batch_size=1,
        record_into="log",
    )
    with grpc.insecure_channel(server.address) as channel:
        call = pb_grpc.SelectionServiceStub(channel).Select(request, timeout=120)
        got = 0
        for message in call:
            got += message.WhichOneof("message") == "batch"
            if got == 3:
                call.cancel()
                break
        assert got == 3
    # the same server answers a later Select with nothing recorded by the cancelled one
    _, s = _select(client, 5, exclude_set="log", record_into="log")
    assert (s.excluded_by_set, s.recorded, s.record_set_count) == (0, 5, 5)


@pytest.mark.parametrize(
    ("reason", "kwargs"),
    [
        ("exclude_set not a name", {"exclude_set": "a b"}),
        ("exclude_set hidden", {"exclude_set": ".x"}),
        ("record_into a path", {"record_into": "../x"}),
        ("record_into too long", {"record_into": "x" * 129}),
    ],
)
def test_bad_select_options(client: Client, reason: str, kwargs: dict[str, str]) -> None:
    _fill(client)
    assert _code(lambda: _select(client, 5, **kwargs)) == grpc.StatusCode.INVALID_ARGUMENT, reason
    assert client.id_sets("pool") == []


def test_bad_id_set_requests(client: Client) -> None:
    _fill(client)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.put_id_set("pool", "a/b", ["x"])) == bad
    assert _code(lambda: client.put_id_set("pool", "", ["x"])) == bad
    assert _code(lambda: client.put_id_set("pool", "s", ["x", ""])) == bad
    assert _code(lambda: client.put_id_set("pool", "s", ["x" * 513])) == bad
    assert _code(lambda: client.get_id_set("pool", "a b")) == bad
    assert _code(lambda: client.id_sets("")) == bad
    missing = grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.put_id_set("nope", "s", ["x"])) == missing
    assert _code(lambda: client.id_sets("nope")) == missing
    assert _code(lambda: client.get_id_set("pool", "s")) == missing
    assert client.id_sets("pool") == []


def test_get_id_set_pages_through_sorted_ids(client: Client) -> None:
    _fill(client)
    ids = [f"id{i:03d}" for i in range(23)] + ["é", "Z", "a b", "\u4e2d"]
    client.put_id_set("pool", "many", reversed(ids))
    pages, token = [], ""
    while True:
        page = client.get_id_set_page("pool", "many", page_size=7, page_token=token)
        assert page.info.count == len(ids)
        pages.append(page.ids)
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [7, 7, 7, 6]
    assert [i for p in pages for i in p] == sorted(ids)  # by code point
    assert client.get_id_set("pool", "many", page_size=5) == client.get_id_set("pool", "many")
    assert client.get_id_set("pool", "many")[1] == sorted(ids)
    # a page holds the ids after the previous page's last one: writes between pages show up after it
    first = client.get_id_set_page("pool", "many", page_size=7)
    client.put_id_set("pool", "many", ["id000a", "zz"], append=True)
    rest = client.get_id_set("pool", "many", page_size=7)[1]
    after = client.get_id_set_page("pool", "many", page_size=100, page_token=first.next_page_token)
    assert list(after.ids) == [i for i in rest if i > first.ids[-1]]
    assert "zz" in after.ids
    assert "id000a" not in after.ids


def test_get_id_set_default_and_largest_page(client: Client) -> None:
    _fill(client)
    ids = [f"x{i:06d}" for i in range(10_001)]
    client.put_id_set("pool", "big", ids)
    first = client.get_id_set_page("pool", "big")
    assert first.ids == tuple(ids[:10_000])
    assert first.next_page_token
    last = client.get_id_set_page("pool", "big", page_token=first.next_page_token)
    assert (last.ids, last.next_page_token) == ((ids[-1],), "")
    whole = client.get_id_set_page("pool", "big", page_size=10**9)  # over the maximum: the maximum
    assert (len(whole.ids), whole.next_page_token) == (10_001, "")
    assert client.get_id_set("pool", "big")[1] == ids


@pytest.mark.parametrize(
    "token",
    ["garbage!", "é", "eA==", "aWRzMTo=", "aWRzMjp4"],  # eA==: "x" without the tag; then "ids1:", "ids2:x"
)
def test_bad_page_token_or_size_is_invalid_argument(client: Client, token: str) -> None:
    _fill(client)
    client.put_id_set("pool", "s", ["a", "b"])
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.get_id_set_page("pool", "s", page_token=token)) == bad
    assert _code(lambda: client.get_id_set_page("pool", "s", page_size=-1)) == bad
