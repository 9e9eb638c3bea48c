"""Near-copy stress: pools in which a share of the texts appears several times, slightly changed.

``gotd eval --near-copies FRAC[,COPIES]`` gives every ``FRAC`` share of the corpus (chosen by a hash
of the text id, so the same rows in every task and seed, and their encodings are cached once) ``COPIES``
near-copies (default 4), made in turn by: an exact copy, re-casing, appending a boilerplate line,
dropping one word. Each task's pool then holds its own texts plus the copies of those chosen, shuffled;
``k`` stays a share of the clean pool. Copies carry their source's label, so plain precision counts
them; :func:`redundancy` and :func:`distinct_precision` do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import xxhash

from gotd.lab.evaluation.embed import embed_texts
from gotd.lab.evaluation.tasks import Task

__all__ = [
    "BOILERPLATE",
    "NearCopies",
    "copied_rows",
    "copy_cosines",
    "distinct_precision",
    "make_copy",
    "parse_near_copies",
    "redundancy",
    "stress_tasks",
    "text_encoder",
]

NearCopies = tuple[float, int]
BOILERPLATE = (
    "Click here to subscribe to our newsletter.",
    "This article is licensed under the Creative Commons Attribution-ShareAlike License.",
    "Share this page: Facebook, Twitter, Email.",
    "Advertisement. Continue reading below.",
)
VARIANTS = ("exact", "recased", "boilerplate", "word dropped")


def parse_near_copies(value: str) -> NearCopies:
    """``"FRAC[,COPIES]"`` as ``(frac, copies)``: frac in (0, 1], copies >= 1 (default 4)."""
    parts = [p.strip() for p in value.split(",")]
    try:
        frac = float(parts[0])
        copies = int(parts[1]) if len(parts) > 1 else 4
    except ValueError:
        raise ValueError(f"--near-copies expects FRAC[,COPIES], e.g. 0.1,4; got {value!r}") from None
    if len(parts) > 2 or not 0 < frac <= 1 or copies < 1:
        raise ValueError(f"--near-copies expects FRAC in (0, 1] and COPIES >= 1, got {value!r}")
    return frac, copies


def _unit(key: str) -> float:
    return xxhash.xxh3_64_intdigest(key.encode("utf-8")) / 2.0**64


def copied_rows(ids: Sequence[str], frac: float) -> np.ndarray:
    """Corpus rows that get copies: those whose id hashes below ``frac`` (the same in every task)."""
    return np.flatnonzero(np.array([_unit(f"near-copy:{i}") < frac for i in ids], dtype=bool))


def make_copy(text: str, variant: int, key: str) -> str:
    """Near-copy number ``variant`` of ``text`` (the variants cycle; ``key`` seeds the choices)."""
    kind = VARIANTS[variant % len(VARIANTS)]
    pick = xxhash.xxh3_64_intdigest(f"{key}:{variant}".encode())
    if kind == "exact":
        return text
    if kind == "recased":
        return text.lower() if text.lower() != text else text.upper()
    if kind == "boilerplate":
        return f"{text} {BOILERPLATE[pick % len(BOILERPLATE)]}"
    words = text.split()
    if len(words) < 2:
        return f"{text} {BOILERPLATE[pick % len(BOILERPLATE)]}"
    drop = pick % len(words)
    return " ".join(words[:drop] + words[drop + 1 :])


def stress_tasks(
    tasks: Sequence[tuple[int, Task]],
    ids: Sequence[str],
    texts: Sequence[str],
    near: NearCopies,
    encode: Callable[[list[str]], np.ndarray],
    vectors: np.ndarray,
) -> tuple[list[tuple[int, Task]], list[str], np.ndarray, np.ndarray]:
    """Add near-copies to the pools of ``tasks``.

    Returns the new tasks (pool rows index the extended corpus, ``pool_source`` names each row's
    original, ``clean_size`` the clean pool), the copy texts, their source rows, and their unit
    embeddings (exact copies reuse the source's vector; ``encode`` embeds the others).
    """
    frac, copies = near
    chosen = copied_rows(ids, frac)
    source = np.repeat(chosen, copies)
    variant = np.tile(np.arange(copies), chosen.size)
    extra = [make_copy(texts[s], v, ids[s]) for s, v in zip(source.tolist(), variant.tolist(), strict=True)]
    extra_vectors = np.ascontiguousarray(vectors[source], dtype=np.float32)
    changed = [i for i, (s, t) in enumerate(zip(source.tolist(), extra, strict=True)) if t != texts[s]]
    if changed:
        encoded = np.asarray(encode([extra[i] for i in changed]), dtype=np.float32)
        extra_vectors[changed] = encoded / np.linalg.norm(encoded, axis=1, keepdims=True)
    base = len(texts)
    copies_of: dict[int, list[int]] = {}
    for j, s in enumerate(source.tolist()):
        copies_of.setdefault(s, []).append(base + j)
    out = []
    for seed, task in tasks:
        added = [r for row in task.pool.tolist() for r in copies_of.get(row, [])]
        rows = np.concatenate([task.pool, np.asarray(added, dtype=np.int64)])
        src = np.concatenate([task.pool, source[np.asarray(added, dtype=np.int64) - base]])
        positives = task.pool[task.pool_is_target]
        target = np.concatenate([task.pool_is_target, np.isin(src[len(task.pool) :], positives)])
        rng = np.random.default_rng([seed, xxhash.xxh3_64_intdigest(f"copies:{task.label}".encode())])
        order = rng.permutation(rows.size)
        out.append(
            (
                seed,
                replace(
                    task,
                    pool=rows[order],
                    pool_is_target=target[order],
                    pool_source=src[order],
                    clean_size=task.pool.size,
                ),
            )
        )
    return out, extra, source, extra_vectors


def redundancy(top: np.ndarray, source: np.ndarray) -> float:
    """Share of the selection ``top`` (pool rows) that repeats an item already selected."""
    return 1.0 - np.unique(source[top]).size / top.size if top.size else float("nan")


def distinct_precision(top: np.ndarray, source: np.ndarray, is_target: np.ndarray) -> float:
    """Distinct items of the target label in the selection, over its size."""
    return np.unique(source[top][is_target[top]]).size / top.size if top.size else float("nan")


def text_encoder(model_path: str | None, cache_dir: Path | None) -> Callable[[list[str]], np.ndarray]:
    """Embeds texts through the per-text cache (near-copy texts are not in any corpus matrix)."""
    from gotd.server.ingest.embedder import DEFAULT_MODEL_ID, Embedder

    model_id = DEFAULT_MODEL_ID if model_path is None else Path(model_path).expanduser().resolve().name
    return lambda texts: (
        embed_texts(texts, lambda: Embedder(model_path), model_id=model_id, cache_dir=cache_dir).vectors
    )


def copy_cosines(
    ids: Sequence[str],
    texts: Sequence[str],
    vectors: np.ndarray,
    near: NearCopies,
    encode: Callable[[list[str]], np.ndarray],
) -> dict[str, np.ndarray]:
    """Cosine of each kind of near-copy to its source, and of every text to its nearest other text.

    What the near-copy threshold has to separate: ``{variant: cosines}`` for the copies that
    :func:`stress_tasks` makes of the rows :func:`copied_rows` picks, and ``"nearest other"``: for each
    corpus row, the largest cosine to a row with a different text.
    """
    frac, copies = near
    chosen = copied_rows(ids, frac)
    out: dict[str, list[float]] = {}
    for variant in range(1, min(copies, len(VARIANTS))):
        made = [make_copy(texts[s], variant, ids[s]) for s in chosen.tolist()]
        v = np.asarray(encode(made), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[VARIANTS[variant]] = np.einsum("ij,ij->i", v, vectors[chosen]).tolist()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    codes = np.unique(np.asarray(texts, dtype=object), return_inverse=True)[1]
    nearest = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), 2048):
        sims = x[start : start + 2048] @ x.T
        sims[codes[start : start + 2048, None] == codes[None, :]] = -1.0  # itself and identical texts
        nearest[start : start + len(sims)] = sims.max(axis=1)
    result = {name: np.asarray(values) for name, values in out.items()}
    result["nearest other"] = nearest
    return result
