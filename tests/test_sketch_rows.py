"""The batched ``tf_rows`` equals, bit for bit, the text-by-text computation it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

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
