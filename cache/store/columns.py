"""Compact string columns of a pool snapshot: a Python ``str`` is made only for a row that is read.

A million ids as a list of ``str`` cost ~66 bytes a row (object header, characters, list pointer);
:class:`TextColumn` keeps them as one UTF-8 buffer and ``n + 1`` int64 offsets (the id's bytes plus 8
a row). Domains, mostly empty or a handful of labels, are a :class:`LabelColumn`: int32 codes into a
table of the distinct labels (4 bytes a row).

Both are read-only sequences of ``str`` (``len``, ``[i]``, iteration, ``==`` against any sequence of
str) with a vectorised :meth:`take` for many rows. They grow by appending into spare capacity
(:mod:`gotd.cache.store.buffers`): a grown snapshot costs the rows it adds, not the pool.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Final, overload

import numpy as np

from gotd.cache.store.buffers import grown_rows, spare_rows

__all__ = ["LabelColumn", "LabelColumnBuilder", "Picked", "TextColumn", "TextColumnBuilder"]

_ITER_BLOCK: Final = 4096  # rows decoded at a time when a column is iterated


class _StrColumn(Sequence[str]):
    """The sequence protocol shared by the columns: ``take`` is the one way rows are read."""

    __slots__ = ()

    def take(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        raise NotImplementedError

    @overload
    def __getitem__(self, at: int) -> str: ...

    @overload
    def __getitem__(self, at: slice) -> list[str]: ...

    def __getitem__(self, at: int | slice) -> str | list[str]:
        n = len(self)
        if isinstance(at, slice):
            return self.take(np.arange(*at.indices(n), dtype=np.int64))
        i = int(at)
        if not -n <= i < n:
            raise IndexError(f"row {at} out of range for {n} rows")
        return self.take([i % n])[0]

    def __iter__(self) -> Iterator[str]:
        n = len(self)
        for start in range(0, n, _ITER_BLOCK):
            yield from self.take(np.arange(start, min(n, start + _ITER_BLOCK), dtype=np.int64))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = self.take(np.arange(min(len(self), 3), dtype=np.int64))
        return f"{type(self).__name__}({len(self)} rows: {head}{'...' if len(self) > 3 else ''})"


class TextColumn(_StrColumn):
    """Strings as one UTF-8 buffer (``data``, uint8) and ``len + 1`` offsets (int64) into it."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        if data.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.ndim != 1 or not len(offsets):
            raise ValueError("a text column is uint8 data and at least one int64 offset")
        self.data = data
        self.offsets = offsets

    @classmethod
    def of(cls, values: Iterable[str]) -> TextColumn:
        """A column holding ``values``."""
        builder = TextColumnBuilder()
        builder.extend(list(values))
        return builder.build()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)

    def take(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        """The strings of ``rows`` (ints in ``0..len-1``), in that order."""
        at = np.asarray(rows, dtype=np.int64)
        if len(at) and (int(at.min()) < 0 or int(at.max()) >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows")
        starts, stops = self.offsets[at].tolist(), self.offsets[at + 1].tolist()
        view = self.data.data  # a memoryview: one copy per string, into its str
        return [str(view[a:b], "utf-8") for a, b in zip(starts, stops, strict=True)]

    def extended(self, values: Sequence[str]) -> TextColumn:
        """This column with ``values`` appended (in the spare capacity of its buffers when unclaimed, so
        the cost is that of ``values``); this column is unchanged."""
        if not values:
            return self
        data, lengths = _encode(values)
        end, n = int(self.offsets[-1]), len(self)
        out_data = grown_rows(self.data, end + len(data), appended=True)
        out_data[end:] = np.frombuffer(data, dtype=np.uint8)
        offsets = grown_rows(self.offsets, n + 1 + len(values), appended=True)
        np.cumsum(lengths, out=offsets[n + 1 :])
        offsets[n + 1 :] += end
        return TextColumn(out_data, offsets)


class TextColumnBuilder:
    """Collects strings part by part (a pool's chunks), then builds one :class:`TextColumn` in buffers
    with room for the pool to grow; ``expect`` rows are given room from the start (more may come)."""

    def __init__(self, expect: int = 0) -> None:
        self._parts: list[bytes] = []
        self._offsets = spare_rows(expect + 1, dtype=np.int64)
        self._offsets[0] = 0
        self._end = 0  # bytes so far
        self.count = 0

    def extend(self, values: Sequence[str]) -> None:
        data, lengths = _encode(values)
        n = self.count + len(values)
        if n + 1 > len(self._offsets):
            self._offsets = grown_rows(self._offsets, max(n + 1, 2 * len(self._offsets)), appended=True)
        np.cumsum(lengths, out=self._offsets[self.count + 1 : n + 1])
        self._offsets[self.count + 1 : n + 1] += self._end
        self._parts.append(data)
        self._end += len(data)
        self.count = n

    def build(self) -> TextColumn:
        data = spare_rows(self._end, dtype=np.uint8)
        at = 0
        for part in self._parts:
            data[at : at + len(part)] = np.frombuffer(part, dtype=np.uint8)
            at += len(part)
        offsets = self._offsets[: self.count + 1]
        if len(self._offsets) != self.count + 1:  # more room than rows: a view of its own buffer
            offsets = grown_rows(offsets, self.count + 1, appended=False)
        self._parts = []
        return TextColumn(data, offsets)


def _encode(values: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """The UTF-8 bytes of ``values`` joined, and each one's byte length."""
    joined = "".join(values)
    if joined.isascii():  # one encode; a character is a byte
        return joined.encode("ascii"), np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    encoded = [v.encode("utf-8") for v in values]
    return b"".join(encoded), np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))


class LabelColumn(_StrColumn):
    """Strings from a small vocabulary: int32 ``codes`` into the distinct ``labels``."""

    __slots__ = ("codes", "labels")

    def __init__(self, codes: np.ndarray, labels: tuple[str, ...]) -> None:
        if codes.dtype != np.int32 or codes.ndim != 1:
            raise ValueError("label codes are a 1-D int32 array")
        self.codes = codes
        self.labels = labels

    @classmethod
    def of(cls, values: Iterable[str]) -> LabelColumn:
        """A column holding ``values``."""
        builder = LabelColumnBuilder()
        builder.extend(list(values))
        return builder.build()

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes) + sum(len(s) + 64 for s in self.labels)

    def take(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        """The labels of ``rows``, in that order."""
        labels = self.labels
        return [labels[c] for c in self.codes[np.asarray(rows, dtype=np.int64)].tolist()]

    def isin(self, wanted: Collection[str]) -> np.ndarray:
        """Bool mask ``(len,)``: rows whose label is one of ``wanted``."""
        codes = [c for c, label in enumerate(self.labels) if label in wanted]
        if not codes:
            return np.zeros(len(self), dtype=bool)
        mask: np.ndarray = (
            self.codes == codes[0]
            if len(codes) == 1
            else np.isin(self.codes, np.asarray(codes, dtype=np.int32))
        )
        return mask

    def patched(self, n: int, rows: np.ndarray, values: Sequence[str], appended: bool) -> LabelColumn:
        """This column grown to ``n`` rows with ``values`` at ``rows`` (in spare capacity when only rows
        past its end are written, ``appended``); this column is unchanged."""
        index = {label: c for c, label in enumerate(self.labels)}
        labels = list(self.labels)
        distinct = set(values)
        if len(distinct) == 1:  # the common case (no domain, or one): one code, no loop over the rows
            new = np.full(len(values), _code(index, labels, distinct.pop()), dtype=np.int32)
        else:
            new = np.fromiter((_code(index, labels, v) for v in values), dtype=np.int32, count=len(values))
        codes = grown_rows(self.codes, n, appended)
        codes[rows] = new
        return LabelColumn(codes, tuple(labels))


class LabelColumnBuilder:
    """Collects labels part by part, then builds one :class:`LabelColumn` with room to grow."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._labels: list[str] = []
        self._codes: list[np.ndarray] = []

    def extend(self, values: Sequence[str]) -> None:
        index, labels = self._index, self._labels
        if values and not any(values) and "" in index:  # the common case: no domain
            self._codes.append(np.full(len(values), index[""], dtype=np.int32))
            return
        self._codes.append(
            np.fromiter((_code(index, labels, v) for v in values), dtype=np.int32, count=len(values))
        )

    def build(self) -> LabelColumn:
        n = sum(len(c) for c in self._codes)
        codes = spare_rows(n, dtype=np.int32)
        if n:
            np.concatenate(self._codes, out=codes)
        self._codes = []
        return LabelColumn(codes, tuple(self._labels))


def _code(index: dict[str, int], labels: list[str], value: str) -> int:
    code = index.get(value)
    if code is None:
        code = index[value] = len(labels)
        labels.append(value)
    return code


class Picked(_StrColumn):
    """The strings of some rows of a column (``column[rows[i]]`` at ``i``), read on demand."""

    __slots__ = ("_column", "_rows")

    def __init__(self, column: TextColumn | LabelColumn, rows: np.ndarray) -> None:
        self._column = column
        self._rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        """The strings at positions ``rows`` of the picked rows."""
        return self._column.take(self._rows[np.asarray(rows, dtype=np.int64)])
