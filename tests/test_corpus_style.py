"""The style-labelled corpus, read from the installed ``sotu`` package."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

import pytest

from gotd.lab.corpora import sotu as corpus_style
from gotd.lab.corpora.sotu import MAX_WORDS, MIN_CHUNKS, MIN_WORDS, chunk_text, load_style


def test_many_presidents_each_with_enough_chunks() -> None:
    counts = Counter(doc.topic for doc in load_style())
    assert len(counts) >= 30
    assert min(counts.values()) >= MIN_CHUNKS
    assert sum(counts.values()) >= 15_000
    for name in ("George Washington", "Abraham Lincoln", "Franklin D. Roosevelt", "Barack Obama"):
        assert counts[name] >= MIN_CHUNKS
    # A president with two non-consecutive terms is one label; one with few chunks is dropped.
    assert "Grover Cleveland" in counts
    assert "Zachary Taylor" not in counts


def test_chunks_are_paragraph_sized_and_clean() -> None:
    docs = load_style()
    for doc in docs:
        words = doc.text.split()
        assert MIN_WORDS <= len(words) <= MAX_WORDS, doc.id
        assert doc.text == " ".join(words)
        assert "[Applause]" not in doc.text
        assert "[Laughter]" not in doc.text
        assert doc.topic
    mean = sum(len(doc.text.split()) for doc in docs) / len(docs)
    assert 80 <= mean <= 130


def test_ids_are_unique_sorted_and_name_the_address() -> None:
    docs = load_style()
    ids = [doc.id for doc in docs]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    speeches = corpus_style.data_dir() / "speeches"
    for fileid in {doc_id.rsplit("/", 1)[0] for doc_id in ids}:
        assert (speeches / f"{fileid}.txt").is_file()
    assert ids[0] == "1790-Washington-1/000"
    assert docs[0].topic == "George Washington"


def test_loading_is_deterministic() -> None:
    first = load_style()
    load_style.cache_clear()
    second = load_style()
    assert first == second
    assert first is not second


def test_chunk_text_splits_long_paragraphs_at_sentences_and_joins_short_ones() -> None:
    sentence = "The Union is strong and the people are free to govern themselves well."  # 13 words
    long_paragraph = " ".join([sentence] * 30)  # 390 words: 15 sentences fit in 200
    text = "Fellow-Citizens:\n\nShort one here.\n\n" + long_paragraph + "\n\n[Applause]\n\nTail."
    chunks = chunk_text(text)
    # The short paragraphs join the first sentence-aligned 195-word piece; the lone tail drops.
    assert [len(c.split()) for c in chunks] == [199, 195]
    assert chunks[0].startswith("Fellow-Citizens: Short one here. The Union")
    assert chunks[1].startswith("The Union")
    assert all(c.endswith("well.") for c in chunks)
    assert chunk_text("one two three\n\n" + " ".join(["word"] * 50)) == [
        "one two three " + " ".join(["word"] * 50)
    ]
    assert chunk_text(" ".join(["x"] * 430)) == [" ".join(["x"] * 200)] * 2  # 30-word rest dropped


def test_missing_package_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=re.escape(corpus_style.INSTALL_HINT)):
        corpus_style.data_dir()


def test_subset_keeps_the_largest_labels_and_a_deterministic_sample() -> None:
    full = Counter(d.topic for d in load_style())
    sub = load_style(labels=3, per_label=50)
    counts = Counter(d.topic for d in sub)
    assert set(counts) == {label for label, _ in full.most_common(3)}
    assert set(counts.values()) == {50}
    assert [d.id for d in sub] == sorted(d.id for d in sub)
    assert sub == load_style(labels=3, per_label=50)
    assert {d.id for d in sub} <= {d.id for d in load_style()}


def test_bible_passages_are_labelled_by_genre_within_one_chapter() -> None:
    from gotd.lab.corpora.bible import GENRES, MIN_VERSES, VERSES, load_bible
    from gotd.lab.corpora.registry import BIBLE_PER_LABEL, load_corpus

    everything = load_bible()
    assert len({d.id for d in everything}) == len(everything)
    assert {d.topic for d in everything} == set(GENRES)
    first_verses = [int(d.id.rsplit("/", 1)[1]) for d in everything]
    assert all((v - 1) % VERSES == 0 for v in first_verses)  # passages start on the chapter's grid
    assert min(len(d.text.split()) for d in everything) >= MIN_VERSES
    docs, name = load_corpus("bible")
    assert Counter(d.topic for d in docs) == dict.fromkeys(GENRES, BIBLE_PER_LABEL)
    assert docs == load_corpus("bible")[0]
    assert "genre" in name
    assert docs[0].topic == "law"  # canon order
