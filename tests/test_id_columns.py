"""The compact id and domain columns of a pool snapshot: round trips (non-ASCII, empty strings), growth
equal to a fresh build and to a whole reload of the store, and ids through a real server's Select,
exclusions, id sets and Score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gotd.cache.records import Record
from gotd.cache.store.columns import LabelColumn, Picked, TextColumn
from gotd.cache.store.core import Store
from gotd.client.client import Client
from tests.conftest import clustered

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # UTF-8 encodable
DIM = 16


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXT, max_size=40), st.lists(st.lists(TEXT, max_size=10), max_size=4), st.data())
def test_text_column_round_trips_and_grows_like_a_fresh_one(
    values: list[str], growths: list[list[str]], data: st.DataObject
) -> None:
    column = TextColumn.of(values)
    assert list(column) == values
    assert column == values
    assert len(column) == len(values)
    if values:
        rows = data.draw(st.lists(st.integers(0, len(values) - 1), max_size=20))
        assert column.take(rows) == [values[r] for r in rows]
        assert [column[r] for r in rows] == [values[r] for r in rows]
        assert column[-1] == values[-1]
        assert Picked(column, np.asarray(rows, dtype=np.int64)) == [values[r] for r in rows]
    assert column[1:-1:2] == values[1:-1:2]
    with pytest.raises(IndexError):
        column[len(values)]
    grown, want = column, list(values)
    for more in growths:
        grown, want = grown.extended(more), want + more
        assert grown == want == TextColumn.of(want)
        assert list(grown.data) == list(TextColumn.of(want).data)
    assert column == values  # every growth left the first column alone
    branch = column.extended(["branch"])  # a second growth of the same column: no aliasing
    assert branch == [*values, "branch"]
    assert grown == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["", "", "", "wiki", "été", "日本"]), max_size=40), st.data())
def test_label_column_patches_like_a_fresh_one(labels: list[str], data: st.DataObject) -> None:
    column = LabelColumn.of(labels)
    assert list(column) == labels
    assert column == labels
    assert list(column.isin({"été", "日本"})) == [v in {"été", "日本"} for v in labels]
    assert not column.isin({"absent"}).any()
    extra = data.draw(st.integers(0, 5))
    n = len(labels) + extra
    rows = sorted(
        set(data.draw(st.lists(st.integers(0, max(0, len(labels) - 1)), max_size=5))) if labels else []
    )
    rows += list(range(len(labels), n))
    values = data.draw(st.lists(TEXT, min_size=len(rows), max_size=len(rows)))
    patched = column.patched(n, np.asarray(rows, dtype=np.int64), values, appended=len(rows) == extra)
    want = [*labels, *[""] * extra]
    for r, v in zip(rows, values, strict=True):
        want[r] = v
    assert patched == want == LabelColumn.of(want)
    assert column == labels


def _records(ids: list[str], seed: int, domains: list[str]) -> list[Record]:
    x = clustered(len(ids), seed=seed, dim=DIM)
    return [Record(id=i, embedding=x[j], domain=domains[j % len(domains)]) for j, i in enumerate(ids)]


def test_grown_snapshots_keep_non_ascii_ids_and_domains_equal_to_a_reload(tmp_path: Path) -> None:
    first = [f"é{i}" if i % 3 else f"日本-{i}" for i in range(300)]
    with Store(tmp_path) as store:
        store.upsert("p", _records(first, 1, ["", "", "wiki"]), model="m", dim=DIM)
        base = store.load_vectors("p")
        # appended rows, changed rows with new domains (a row keeps its id), then deletes
        store.upsert("p", _records(["ñew-1", "ñew-2", "x"], 2, ["été"]), model="m", dim=DIM)
        store.upsert("p", _records(first[10:20], 3, ["日本", ""]), model="m", dim=DIM)
        grown = store.load_vectors("p", base=base)
        fresh = store.load_vectors("p")
        assert grown.ids == fresh.ids == [*first, "ñew-1", "ñew-2", "x"]
        assert grown.domains == fresh.domains
        assert grown.domains[10:12] == ["日本", ""]
        assert grown.domains[-1] == "été"
        assert base.ids == first
        assert base.domains[10] == ""
        store.delete_records("p", ["ñew-2", first[0]])
        after = store.load_vectors("p", base=grown)
        assert after.ids == store.load_vectors("p").ids == grown.ids
        assert after.deleted is not None
        assert [after.ids[r] for r in np.flatnonzero(after.deleted)] == [first[0], "ñew-2"]


def test_ids_round_trip_through_a_real_select(client: Client) -> None:
    n = 200
    ids = [f"ид-{i}" if i % 2 else f"{i}-日本語-é" for i in range(n)]
    x = clustered(n, seed=1, dim=DIM)
    domains = ["", "wikī"]
    records = [{"id": i, "embedding": x[j].tolist(), "domain": domains[j % 2]} for j, i in enumerate(ids)]
    client.ingest("pool", records)
    targets = clustered(10, seed=2, dim=DIM).tolist()
    plain = {"mode": "exact", "near_copy_cosine": 0.0}
    ranked, _ = client.select("pool", targets, k=n, **plain)
    order = [c.id for c in ranked]
    assert sorted(order) == sorted(ids)
    gone = set(order[:5:2]) | {order[-1]}
    without, _ = client.select("pool", targets, k=n, exclude_ids=sorted(gone), **plain)
    assert [c.id for c in without] == [i for i in order if i not in gone]
    client.put_id_set("pool", "seen", order[:7])
    after_set, summary = client.select("pool", targets, k=n, exclude_set="seen", **plain)
    assert [c.id for c in after_set] == order[7:]
    assert summary.excluded_by_set == 7
    in_domain, _ = client.select("pool", targets, k=n, domains=["wikī"], **plain)
    assert {c.id for c in in_domain} == set(ids[1::2])
    scores = client.score("pool", targets, [order[3], order[0]], mode="exact")
    assert [(s.id, s.score) for s in scores] == [(order[3], ranked[3].score), (order[0], ranked[0].score)]
