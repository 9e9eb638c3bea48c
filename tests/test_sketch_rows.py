"""The batched ``tf_rows`` (numpy tokeniser and xxh3_64) equals, bit for bit, the text-by-text
computation it replaced: the regex tokeniser of ``ngrams`` and one ``xxhash`` call per n-gram."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gotd.server.selection.ngram_hash import _Classes, char_classes, xxh3_slices
from gotd.server.selection.sketches import SKETCH_BUCKETS, ngrams, tf_rows


def _reference(texts: list[str | None], buckets: int) -> np.ndarray:
    """tf_rows as it was computed text by text (one hash call and one dense row per text)."""
    out = np.zeros((len(texts), buckets), dtype=np.float16)
    for row, text in enumerate(texts):
        if text:
            grams = ngrams(text, order=2)
            h = np.fromiter(
                (xxhash.xxh3_64_intdigest(g.encode("utf-8"), 0) for g in grams), np.uint64, len(grams)
            )
            slots = (h % np.uint64(buckets)).astype(np.intp)
            signs = np.where(h >= np.uint64(1 << 63), -1.0, 1.0)
            sums = np.bincount(slots, weights=signs, minlength=buckets)
            out[row] = np.sign(sums) * np.log1p(np.abs(sums))
    return out


def _random_texts(rng: np.random.Generator, n: int) -> list[str | None]:
    alphabet = [*"abcdefgh ijk,.!?;'-\t\n", "é", "ß", "Σ", "ς", "日本", "İ", "ﬁ", "😀", "\x00", "\u200b", "ǅ"]
    words = ["the", "cat", "The", "CAT", "sat", "ΟΔΟΣ", "straße", "naïve", "x" * 300, "a\x00b", "!!", "..."]
    out: list[str | None] = []
    for _ in range(n):
        kind = rng.integers(0, 6)
        if kind == 0:
            out.append(None)
        elif kind == 1:
            out.append(rng.choice(["", " ", "\n\t", ".", "a"]))
        elif kind == 2:
            out.append("".join(rng.choice(alphabet, size=int(rng.integers(1, 80)))))
        else:
            out.append(" ".join(rng.choice(words, size=int(rng.integers(1, 60)))))
    return out


TEXTS: list[str | None] = [
    "The cat sat on the mat.",
    None,
    "",
    "   \n ",
    "ΟΔΟΣ ΟΔΟΣ. Σ ΑΣ",  # final sigma when lower-cased, text by text
    "naïve café — 日本語のテキスト 😀 emoji!!! ... ?!",
    "İstanbul ﬁnal ǅ",
    "a\x00b \x00 c",  # the separator inside a text: the batch is tokenised text by text
    "word " * 20_000,  # very long, one bucket summing far past float16's integers
    " ".join(f"w{i}" for i in range(5000)),
    "x" * 100_000,
    "it's a dog's life, isn't it? (yes) [no] {maybe}",
]


@pytest.mark.parametrize("buckets", [1, 7, 64, SKETCH_BUCKETS])
def test_tf_rows_equal_the_text_by_text_rows(buckets: int) -> None:
    got = tf_rows(TEXTS, buckets=buckets)
    want = _reference(TEXTS, buckets)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_tf_rows_equal_the_reference_on_random_texts_and_batches() -> None:
    rng = np.random.default_rng(3)
    texts = _random_texts(rng, 5000)  # more than one block of the batched pass
    want = _reference(texts, SKETCH_BUCKETS)
    assert np.array_equal(tf_rows(texts).view(np.uint16), want.view(np.uint16))
    clean = [t for t in texts if t is None or "\x00" not in t]  # the joined pass
    assert np.array_equal(tf_rows(clean).view(np.uint16), _reference(clean, SKETCH_BUCKETS).view(np.uint16))
    for i in (0, 17, 4999):  # a row never depends on the rest of its batch
        assert np.array_equal(tf_rows([texts[i]])[0].view(np.uint16), want[i].view(np.uint16))


def test_tf_rows_of_no_texts() -> None:
    assert tf_rows([]).shape == (0, SKETCH_BUCKETS)
    assert not tf_rows([None, "", " "], buckets=8).any()


# Characters where tokenisers and hashes have edge cases: ASCII punctuation and white space, letters
# whose lower case changes length or depends on context, combining marks, digits of other scripts,
# astral code points, NUL and other controls, unusual white space and joiners.
_EDGES = (
    "aZ_09 \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000\x00.,'-!?()é\u0301ßΣςİﬁǅ٣²½日本😀\U0001d7d8\u200b\ufeff"
)
_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(_EDGES), st.characters(exclude_categories=["Cs"])), max_size=60
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.one_of(st.none(), _TEXT, st.sampled_from(["x" * 200, "a b " * 40])), max_size=12))
def test_tf_rows_equal_the_reference_on_any_texts(texts: list[str | None]) -> None:
    for buckets in (5, SKETCH_BUCKETS):
        got = tf_rows(texts, buckets=buckets)
        assert np.array_equal(got.view(np.uint16), _reference(texts, buckets).view(np.uint16))


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=400),
    cuts=st.lists(st.tuples(st.integers(0, 399), st.integers(1, 400))),
)
def test_xxh3_slices_equal_xxhash(data: bytes, cuts: list[tuple[int, int]]) -> None:
    """Every length path (1-3, 4-8, 9-16, 17-128 bytes in numpy; longer ones by xxhash) at any offset."""
    spans = [(s % len(data), n) for s, n in cuts]
    spans = [(s, min(n, len(data) - s)) for s, n in spans] + [(0, len(data))]
    start = np.array([s for s, _ in spans], dtype=np.int64)
    length = np.array([n for _, n in spans], dtype=np.int64)
    buf = np.frombuffer(data + b"\xff" * 16, dtype=np.uint8)  # the padding's value must not matter
    want = [xxhash.xxh3_64_intdigest(data[s : s + n]) for s, n in spans]
    assert xxh3_slices(buf, start, length).tolist() == want


def test_char_classes_match_the_token_pattern_on_every_code_point() -> None:
    """The class table agrees with ``re``'s ``\\w`` and ``\\s`` on all of Unicode (surrogates included)."""
    points = np.arange(0x110000, dtype=np.uint32)
    classes = char_classes(points)
    chars = "".join(map(chr, range(0x110000)))
    word = {m.start() for m in re.finditer(r"\w", chars)}
    space = {m.start() for m in re.finditer(r"\s", chars)}
    want = np.full(0x110000, 2, dtype=np.uint8)
    want[list(space)] = 0
    want[list(word)] = 1
    assert np.array_equal(classes, want)


def test_char_classes_grow_safely_under_concurrent_first_use() -> None:
    """Threads that first need different planes at once all get the right classes (a fresh table)."""
    classes = _Classes()
    starts = [0x41, 0x10041, 0x20041, 0x1D7D8, 0x3000, 0x10FFFF - 5] * 4
    points = [np.arange(s, s + 5, dtype=np.uint32) for s in starts]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(classes.of, points))
    for p, g in zip(points, got, strict=True):
        assert np.array_equal(g, char_classes(p))
