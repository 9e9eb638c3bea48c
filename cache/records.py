"""Candidate records: the validated unit of ingest (files are read by :mod:`gotd.cache.record_files`).

A record file holds one object per record with the schema::

    {"id": str, "text"?: str, "embedding"?: [float, ...], "domain"?: str, "meta"?: {...}}

At least one of ``text`` and ``embedding`` is required. Every check raises
:class:`~gotd.cache.errors.InvalidArgument` with a message that names the record (``record 'x': ...``)
or, for files, the place in the file (``data.jsonl:17: ...``).

This module stays light (json and numpy; pyarrow only when a Parquet file is read): the CLI client
imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from gotd.cache.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "DEFAULT_MAX_TEXT_BYTES",
    "MAX_DOMAIN_BYTES",
    "MAX_ID_BYTES",
    "MAX_META_BYTES",
    "MissingDependencyError",
    "Record",
    "canonical_meta",
    "check_unique_ids",
    "record_from_mapping",
    "validate_id",
    "validate_name",
]


MAX_ID_BYTES: Final = 512
MAX_DOMAIN_BYTES: Final = 1024
MAX_META_BYTES: Final = 64 * 1024
DEFAULT_MAX_TEXT_BYTES: Final = 64 * 1024
MAX_NAME_CHARS: Final = 128
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_FIELDS: Final = frozenset({"id", "text", "embedding", "domain", "meta"})


class MissingDependencyError(FailedPrecondition, ImportError):
    """An optional library needed for this input is not installed; the message names the package."""


def validate_name(name: object, *, kind: str = "name") -> str:
    """Check a pool or target-set name and return it.

    Parameters
    ----------
    name : object
        The candidate name: 1 to 128 characters of ``[A-Za-z0-9._-]``, not starting with ``.``
        (so ``.``, ``..`` and hidden names are refused and a name is always a safe path component).
    kind : str
        What the name names, for the error message ("pool", "target set").

    Raises
    ------
    InvalidArgument
        When the name is not a valid name.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{kind} is required (1..{MAX_NAME_CHARS} characters of [A-Za-z0-9._-])")
    if _NAME.fullmatch(name) is None or name.startswith("."):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidArgument(
            f"{kind} {shown!r} is not a valid name: use 1..{MAX_NAME_CHARS} characters of "
            "[A-Za-z0-9._-], not starting with '.'"
        )
    return name


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid UTF-8 (lone surrogate)") from None


def validate_id(record_id: object) -> str:
    """Check a record id (a string of 1..512 UTF-8 bytes) and return it.

    Raises
    ------
    InvalidArgument
        When the id is missing, empty, too long or not encodable as UTF-8.
    """
    if not isinstance(record_id, str):
        raise InvalidArgument(f"record id must be a string, got {type(record_id).__name__}")
    if not record_id:
        raise InvalidArgument("record id must not be empty")
    size = len(_utf8(record_id, f"record id {record_id[:64]!r}"))
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"record id {record_id[:64]!r}... is {size} bytes (max {MAX_ID_BYTES})")
    return record_id


def canonical_meta(meta: object, *, record_id: str = "?") -> tuple[dict[str, Any], str]:
    """A metadata object and its canonical JSON (sorted keys, compact, no NaN).

    Raises
    ------
    InvalidArgument
        When ``meta`` is not a JSON object of at most ``MAX_META_BYTES`` bytes.
    """
    if meta is None or (isinstance(meta, Mapping) and not meta):
        return {}, "{}"
    if not isinstance(meta, Mapping):
        raise InvalidArgument(f"record {record_id!r}: meta must be a JSON object, got {type(meta).__name__}")
    try:
        text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"record {record_id!r}: meta is not valid JSON ({err})") from None
    if len(_utf8(text, f"record {record_id!r}: meta")) > MAX_META_BYTES:
        raise InvalidArgument(f"record {record_id!r}: meta is over {MAX_META_BYTES} bytes")
    return dict(meta), text


def _embedding(value: object, record_id: str) -> np.ndarray:
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"record {record_id!r}: embedding must be a list of numbers") from None
    if raw.dtype.kind not in "fiu":
        raise InvalidArgument(f"record {record_id!r}: embedding must be a list of numbers")
    if raw.dtype == np.float32:
        vector = raw.copy()  # a private copy: records are immutable
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            vector = raw.astype(np.float32)  # overflow -> inf, refused below
    if vector.ndim != 1 or vector.shape[0] == 0:
        raise InvalidArgument(f"record {record_id!r}: embedding must be a non-empty 1-d list of numbers")
    if not np.isfinite(vector).all():
        raise InvalidArgument(f"record {record_id!r}: embedding has NaN or Inf (or values beyond float32)")
    if not vector.any():
        raise InvalidArgument(f"record {record_id!r}: embedding is the zero vector")
    vector.flags.writeable = False
    return vector


@dataclass(frozen=True, slots=True, eq=False)
class Record:
    """One candidate (or target) record, validated on construction.

    Parameters
    ----------
    id : str
        Unique id within its pool, 1..512 UTF-8 bytes.
    text : str or None
        The text; non-empty after stripping whitespace. Embedded when ``embedding`` is None.
    embedding : numpy.ndarray or None
        Precomputed embedding, shape ``(d,)``, float32, finite and non-zero (normalised on store).
    domain : str
        Optional domain label (PAPER mode groups candidates by it).
    meta : dict
        Free-form JSON object; ``meta_json`` is its canonical JSON text.
    """

    id: str
    text: str | None = None
    embedding: np.ndarray | None = None
    domain: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    meta_json: str = field(init=False, default="{}")

    def __post_init__(self) -> None:
        rid = validate_id(self.id)
        if self.text is not None:
            if not isinstance(self.text, str):
                raise InvalidArgument(f"record {rid!r}: text must be a string")
            if not self.text.strip():
                raise InvalidArgument(f"record {rid!r}: text is empty")
            _utf8(self.text, f"record {rid!r}: text")
        if self.embedding is not None:
            object.__setattr__(self, "embedding", _embedding(self.embedding, rid))
        elif self.text is None:
            raise InvalidArgument(f"record {rid!r}: needs a text or an embedding")
        if not isinstance(self.domain, str):
            raise InvalidArgument(f"record {rid!r}: domain must be a string")
        if len(_utf8(self.domain, f"record {rid!r}: domain")) > MAX_DOMAIN_BYTES:
            raise InvalidArgument(f"record {rid!r}: domain is over {MAX_DOMAIN_BYTES} bytes")
        meta, meta_json = canonical_meta(self.meta, record_id=rid)
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "meta_json", meta_json)

    @classmethod
    def create(
        cls,
        id: str,
        text: str | None = None,
        embedding: object = None,
        domain: str | None = "",
        meta: Mapping[str, Any] | None = None,
        *,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        dim: int | None = None,
    ) -> Record:
        """Build a record from loose input (lists, None), with the size and dimension limits.

        Parameters
        ----------
        max_text_bytes : int
            Largest accepted text, in UTF-8 bytes.
        dim : int or None
            When given, the embedding must have this dimension.

        Raises
        ------
        InvalidArgument
            Naming the record, for any invalid field.
        """
        record = cls(
            id=id,
            text=text,
            embedding=embedding,  # type: ignore[arg-type]
            domain="" if domain is None else domain,
            meta={} if meta is None else meta,  # type: ignore[arg-type]
        )
        if record.text is not None and len(record.text.encode("utf-8")) > max_text_bytes:
            raise InvalidArgument(f"record {record.id!r}: text is over {max_text_bytes} bytes")
        if dim is not None and record.embedding is not None and record.embedding.shape[0] != dim:
            raise InvalidArgument(
                f"record {record.id!r}: embedding has dimension {record.embedding.shape[0]}, expected {dim}"
            )
        return record


def check_unique_ids(records: Iterable[Record], *, where: str = "batch") -> list[str]:
    """The ids of ``records``; raise :class:`InvalidArgument` naming the first id that occurs twice."""
    ids = [record.id for record in records]
    if len(set(ids)) < len(ids):
        seen: set[str] = set()
        for record_id in ids:
            if record_id in seen:
                raise InvalidArgument(f"record {record_id!r}: duplicate id in one {where}")
            seen.add(record_id)
    return ids


# -- readers -------------------------------------------------------------------------------------


def record_from_mapping(item: object, where: str, max_text_bytes: int) -> Record:
    """One record from a parsed JSON object or table row, validated (``where`` names it in errors)."""
    if not isinstance(item, Mapping):
        raise InvalidArgument(f"{where}: a record must be a JSON object")
    unknown = set(item) - _FIELDS
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {sorted(unknown)} (allowed: {sorted(_FIELDS)})")
    if "id" not in item or item["id"] is None:
        raise InvalidArgument(f"{where}: record has no id")
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidArgument(f"{where}: text must be a string")
    embedding = item.get("embedding")
    if embedding is not None and not isinstance(embedding, (list, tuple, np.ndarray)):
        raise InvalidArgument(f"{where}: embedding must be a list of numbers")
    domain = item.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise InvalidArgument(f"{where}: domain must be a string")
    meta = item.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as err:
            raise InvalidArgument(f"{where}: meta is not valid JSON ({err.msg})") from None
    try:
        return Record.create(item["id"], text, embedding, domain, meta, max_text_bytes=max_text_bytes)
    except InvalidArgument as err:
        raise InvalidArgument(f"{where}: {err.message}") from None
