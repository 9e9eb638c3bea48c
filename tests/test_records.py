"""Records: validation with messages naming the record, JSONL and Parquet readers naming file:line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gotd.cache.errors import FailedPrecondition, GotdError, InvalidArgument
from gotd.cache.record_files import read_records
from gotd.cache.records import (
    MissingDependencyError,
    Record,
    check_unique_ids,
    validate_name,
)


@pytest.mark.parametrize("name", ["a", "pool", "wiki-2024.v1", "A_b.c-d", "x" * 128, "0"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "x" * 129, "a b", "é", "a\x00b", None, 3],
)
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_name(name, kind="pool")


@dataclass(frozen=True)
class Case:
    reason: str
    make: Callable[[], Any]
    names: str


BAD_RECORDS = [
    Case("empty id", lambda: Record(id="", text="t"), "id"),
    Case("id over 512 bytes", lambda: Record(id="é" * 257, text="t"), "512"),
    Case("non-string id", lambda: Record(id=5, text="t"), "id"),  # type: ignore[arg-type]
    Case("empty text", lambda: Record(id="r1", text="  \n\t"), "'r1'"),
    Case("neither text nor embedding", lambda: Record(id="r2"), "'r2'"),
    Case("NaN", lambda: Record(id="r3", embedding=np.array([1.0, np.nan])), "'r3'"),
    Case("Inf", lambda: Record(id="r4", embedding=np.array([np.inf, 1.0])), "'r4'"),
    Case("beyond float32", lambda: Record.create("r5", embedding=[1e39, 0.0]), "'r5'"),
    Case("zero vector", lambda: Record(id="r6", embedding=np.zeros(4)), "'r6'"),
    Case("2-d embedding", lambda: Record(id="r7", embedding=np.ones((2, 2))), "'r7'"),
    Case("strings as embedding", lambda: Record.create("r8", embedding=["a", "b"]), "'r8'"),
    Case("empty embedding", lambda: Record.create("r9", embedding=[]), "'r9'"),
    Case("meta not an object", lambda: Record.create("r10", text="t", meta=[1]), "'r10'"),  # type: ignore[arg-type]
    Case("meta with NaN", lambda: Record.create("r11", text="t", meta={"x": float("nan")}), "'r11'"),
    Case("oversized text", lambda: Record.create("r12", text="x" * 101, max_text_bytes=100), "'r12'"),
    Case("oversized meta", lambda: Record.create("r13", text="t", meta={"x": "y" * 70_000}), "'r13'"),
    Case("lone surrogate", lambda: Record.create("r14", text="bad \ud800"), "'r14'"),
    Case("wrong dimension", lambda: Record.create("r15", embedding=[1.0, 2.0], dim=3), "'r15'"),
    Case("non-string domain", lambda: Record(id="r16", text="t", domain=3), "'r16'"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("case", BAD_RECORDS, ids=[c.reason for c in BAD_RECORDS])
def test_bad_records_raise_invalid_argument_naming_the_record(case: Case) -> None:
    with pytest.raises(InvalidArgument) as info:
        case.make()
    assert case.names in info.value.message


def test_record_is_immutable_and_canonical() -> None:
    source = np.array([3.0, 4.0], dtype=np.float32)
    record = Record.create("a", text="hi", embedding=source, meta={"b": 1, "a": [1, 2]}, domain=None)
    assert record.meta_json == '{"a":[1,2],"b":1}'
    assert record.domain == ""
    assert record.embedding is not None
    assert record.embedding is not source
    with pytest.raises(ValueError, match="read-only"):
        record.embedding[0] = 1.0
    assert source.flags.writeable


def test_duplicate_ids_in_a_batch_name_the_id() -> None:
    with pytest.raises(InvalidArgument, match="'dup'"):
        check_unique_ids([Record(id="a", text="x"), Record(id="dup", text="x"), Record(id="dup", text="y")])


def _write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n", encoding="utf-8")
    return path


def test_jsonl_round_trip_in_batches(tmp_path: Path) -> None:
    items = [{"id": f"r{i}", "text": f"text {i}", "domain": "d", "meta": {"i": i}} for i in range(5)] + [
        {"id": "v", "embedding": [0.5, 0.5]}
    ]
    path = _write_jsonl(tmp_path / "a.jsonl", items)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n   \n")
    batches = list(read_records(path, batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    flat = [r for b in batches for r in b]
    assert [r.id for r in flat] == [f"r{i}" for i in range(5)] + ["v"]
    assert flat[2].text == "text 2"
    assert flat[2].meta == {"i": 2}
    assert flat[2].domain == "d"
    assert flat[-1].embedding is not None
    assert flat[-1].embedding.dtype == np.float32


BAD_LINES = [
    Case("not UTF-8", lambda: b'{"id": "a", "text": "caf\xe9"}', "not valid UTF-8"),
    Case("not JSON", lambda: b'{"id": "a", "text": ', "not valid JSON"),
    Case("not an object", lambda: b"[1, 2]", "JSON object"),
    Case("no id", lambda: b'{"text": "x"}', "no id"),
    Case("unknown field", lambda: b'{"id": "a", "txt": "x"}', "unknown field"),
    Case("empty text", lambda: b'{"id": "a", "text": " "}', "'a': text is empty"),
    Case("NaN embedding", lambda: b'{"id": "a", "embedding": [NaN, 1]}', "NaN"),
    Case("meta string not JSON", lambda: b'{"id": "a", "text": "x", "meta": "{"}', "meta"),
]


@pytest.mark.parametrize("case", BAD_LINES, ids=[c.reason for c in BAD_LINES])
def test_bad_jsonl_lines_name_file_and_line(tmp_path: Path, case: Case) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "ok", "text": "fine"}\n' + case.make() + b"\n")
    with pytest.raises(InvalidArgument) as info:
        list(read_records(path))
    assert f"{path}:2" in info.value.message
    assert case.names in info.value.message


def test_duplicate_id_across_batches_names_both_lines(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]
    )
    with pytest.raises(InvalidArgument, match=r"d\.jsonl:3: duplicate id 'a' \(first at .*d\.jsonl:1\)"):
        list(read_records(path, batch_size=1))


@pytest.mark.parametrize("name", ["x.csv", "missing.jsonl"])
def test_unknown_or_missing_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("id\n")
    with pytest.raises(InvalidArgument):
        list(read_records(path))


def test_parquet_round_trip(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "text": ["alpha", None, "gamma"],
            "embedding": [None, [0.1, 0.2, 0.3], [1.0, 0.0, 0.0]],
            "domain": ["x", "y", None],
            "meta": ['{"k": 1}', None, "{}"],
        }
    )
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    batches = list(read_records(path, batch_size=2))
    assert [len(b) for b in batches] == [2, 1]
    a, b, c = (r for batch in batches for r in batch)
    assert (a.text, a.embedding, a.domain, a.meta) == ("alpha", None, "x", {"k": 1})
    assert b.text is None
    assert b.embedding is not None
    assert b.embedding.shape == (3,)
    assert c.domain == ""


def test_parquet_bad_utf8_and_missing_id_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": pa.array([b"ok", b"\xff\xfe"], pa.binary()), "text": ["a", "b"]}), path)
    with pytest.raises(InvalidArgument, match=r"b\.parquet:row 1: id is not valid UTF-8"):
        list(read_records(path))
    no_id = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a"]}), no_id)
    with pytest.raises(InvalidArgument, match="no 'id' column"):
        list(read_records(no_id))


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gotd\[parquet\]'") as info:
        list(read_records(path))
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, FailedPrecondition)
    assert isinstance(info.value, GotdError)


def test_module_is_light() -> None:
    code = (
        "import sys, gotd.cache.records\n"
        "heavy = {'pyarrow', 'torch', 'lmdb', 'faiss', 'sentence_transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda t: t.strip()
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            _texts,
            st.one_of(st.none(), _texts),
            st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda r: r[0],
    )
)
def test_jsonl_round_trip_property(
    tmp_path: Path, rows: list[tuple[str, str | None, dict[str, Any]]]
) -> None:
    items = []
    for rid, text, meta in rows:
        item: dict[str, Any] = {"id": rid, "meta": meta}
        if text is None:
            item["embedding"] = [1.0, 2.0]
        else:
            item["text"] = text
        items.append(item)
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n", encoding="utf-8")
    got = [r for batch in read_records(path, batch_size=3) for r in batch]
    assert [(r.id, r.text, r.meta) for r in got] == [(rid, text, meta) for rid, text, meta in rows]
