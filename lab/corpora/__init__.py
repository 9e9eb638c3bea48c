"""Labelled corpora for evaluation and the demo (wiki topics, State of the Union speakers, Bible genres)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_data(package: str, relative: str, corpus: str, hint: str) -> Path:
    """``relative`` inside the installed data package ``package`` (RuntimeError naming ``hint`` when the
    package is not installed); the caller checks that what it needs is there."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the {corpus} is not installed: {hint}")
    return Path(spec.origin).parent / relative
