"""Cache keys of the dual cache: readable, deterministic, short and Redis-safe (re-exported by duals)."""

from __future__ import annotations

import re

import numpy as np
import xxhash

__all__ = ["cache_key", "glob_escape", "render_part"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_LITERAL = re.compile(r"[A-Za-z0-9._+/@-]{0,48}")


def cache_key(**parts: str | int | float) -> str:
    """Build a readable, deterministic, Redis-safe cache key from named parts.

    Parts are sorted by name and joined as ``name=value`` with ``:``. Ints are written in decimal,
    floats with ``repr`` (``0.1`` stays ``"0.1"``), bools as ``true``/``false``. A value longer than
    48 characters or with characters outside ``[A-Za-z0-9._+/@-]`` is replaced by ``#`` and its
    xxh3_64 hex digest, so keys stay short and never contain ``:``, ``=``, spaces or glob characters.

    Parameters
    ----------
    **parts : str or int or float
        Everything the cached value depends on; must include ``code`` (the code version). Names
        match ``[a-z][a-z0-9_]*`` (at most 32 characters).

    Returns
    -------
    str
        E.g. ``cache_key(pool="wiki", eps=0.1, code=3)`` → ``"code=3:eps=0.1:pool=wiki"``.

    Raises
    ------
    ValueError
        If ``code`` is missing or a name is not valid.
    TypeError
        If a value is not a str, int or float.
    """
    if "code" not in parts:
        raise ValueError("cache_key needs a 'code' (code version) part")
    for name in parts:
        if not _NAME.fullmatch(name):
            raise ValueError(f"cache_key part name {name!r} must match {_NAME.pattern}")
    return ":".join(f"{name}={render_part(parts[name])}" for name in sorted(parts))


def render_part(value: object) -> str:
    """Render one key part value as :func:`cache_key` does (exposed for matching keys by part)."""
    if isinstance(value, bool | np.bool_):
        text = "true" if value else "false"
    elif isinstance(value, int | np.integer):
        text = str(int(value))
    elif isinstance(value, float | np.floating):
        text = float.__repr__(float(value))
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(f"cache key parts must be str, int or float, got {type(value).__name__}")
    if _LITERAL.fullmatch(text):
        return text
    return "#" + xxhash.xxh3_64_hexdigest(text.encode("utf-8", "surrogatepass"))


def glob_escape(text: str) -> str:
    """Escape the glob characters of ``text`` for a Redis ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
