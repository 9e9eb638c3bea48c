"""Selection quality of GOT-D against DSIR and simple baselines on a labelled corpus (issue 7).

One call, :func:`run`, builds a task per label and seed (see :mod:`gotd.lab.evaluation.tasks`) on a
registered corpus (see :mod:`gotd.lab.corpora.registry`) or a caller-supplied one, lets every method
rank the pool from texts and embeddings only (see :mod:`gotd.lab.evaluation.methods`), scores the top
``k`` for each ``k`` in ``ks`` (see :mod:`gotd.lab.evaluation.metrics`), averages over tasks with
standard errors across seeds (see :mod:`gotd.lab.evaluation.summary`) and writes a Markdown report with
plots (see :mod:`gotd.lab.evaluation.report`). Embeddings are computed once and cached on disk, by
default only for the texts the tasks use (see :mod:`gotd.lab.evaluation.embed`); selection times are
measured with embeddings cached and the embedding time is reported separately.

Metrics per task, method and ``k``: precision of the target label; entropic OT cost (same ``eps``)
between the selected and the held-out target embeddings; perplexity on the held-out texts of an
interpolated Kneser-Ney bigram model trained on the selection, at the selection size and at an equal
token budget (every method's selection cut, in rank order, to the fewest tokens any method selected);
tokens selected; top-``k`` overlap with ``gotd-exact``; selection wall time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gotd.cache.store.embeddings import normalise_text
from gotd.lab.corpora.registry import CORPORA, DEFAULT_CORPUS, WIKI_NAME, check_corpus_key, load_corpus
from gotd.lab.corpora.wiki import Doc
from gotd.lab.evaluation import autocost as eval_autocost  # noqa: F401  (registers gotd-auto and its grid)
from gotd.lab.evaluation import fused as eval_fused  # noqa: F401  (registers the fused-cost and default-settings methods)
from gotd.lab.evaluation import learned as eval_learned  # noqa: F401  (registers the learned-cost variants)
from gotd.lab.evaluation import tsds as eval_tsds  # noqa: F401  (registers tsds)
from gotd.lab.evaluation.embed import embed_corpus, embed_texts, embedding_cache_path
from gotd.lab.evaluation.methods import DEFAULT_METHODS, MethodOptions, Selector, make_method
from gotd.lab.evaluation.metrics import BigramKN, ot_distance, precision, tokenize, truncate_to_budget
from gotd.lab.evaluation.report import environment, write_report
from gotd.lab.evaluation.stress import NearCopies, distinct_precision, redundancy, stress_tasks, text_encoder
from gotd.lab.evaluation.summary import summarise
from gotd.lab.evaluation.tasks import Task, TaskSpec, build_task, choose_topics, selection_input

__all__ = [
    "DEFAULT_KS",
    "EMBED_MODES",
    "QUICK_SPEC",
    "WIKI_NAME",
    "evaluate_task",
    "run",
    "summarise",
    "task_sizes",
]

LOG = logging.getLogger(__name__)

#: Selection sizes as fractions of the pool.
DEFAULT_KS: tuple[float, ...] = (0.02, 0.05, 0.10)
#: The smoke version: two labels, small pools (seconds, not minutes).
QUICK_SPEC = TaskSpec(pool_size=300, target_size=30, heldout_size=20, pool_fraction=0.1)
QUICK_TOPICS = ("Mathematics", "Technology")
EXACT = "gotd-exact"
#: ``embed`` choices of :func:`run`.
EMBED_MODES = ("auto", "used", "all")


@dataclass(frozen=True, slots=True)
class Corpus:
    """Texts, labels, tokens and embeddings of an evaluation corpus (rows aligned)."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]
    vectors: np.ndarray


def task_sizes(pool_size: int, ks: Sequence[float]) -> list[int]:
    """Selection sizes ``max(1, round(k * pool_size))`` for fractions ``ks`` in (0, 1]."""
    if not ks or any(not 0 < k <= 1 for k in ks):
        raise ValueError(f"ks must be fractions in (0, 1], got {list(ks)}")
    return [max(1, round(k * pool_size)) for k in ks]


def evaluate_task(
    task: Task,
    corpus: Corpus,
    selectors: Mapping[str, Selector],
    ks: Sequence[float],
    *,
    eps: float,
    seed: int,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """Rank the pool of ``task`` with every selector (by method name) and score each top-``k``.

    Each selector ranks ``repeats`` times; its time is the fastest run (the machine is shared, so the
    minimum is the least noisy estimate) and every run must return the same ranking.

    Returns
    -------
    list of dict
        One row per (method, k): ``label, seed, method, k_frac, k, precision, ceiling, ot, ot_converged,
        ppl, ppl_budget, budget, tokens, overlap_exact, seconds`` (``seconds`` is the method's
        ranking time for the task, shared by its rows), ``diagnostics`` (what the selector reports
        in its optional ``diagnostics`` attribute after ranking, e.g. solver convergence).
    """
    sizes = task_sizes(task.clean_size or task.pool.size, ks)
    inp = selection_input(task, corpus.texts, corpus.vectors, seed=seed)
    heldout = [corpus.tokens[i] for i in task.heldout]
    vocab = {w for i in np.concatenate([task.pool, task.heldout]) for w in corpus.tokens[i]}
    vocab_size = len(vocab) + 1  # + </s>
    y_held = corpus.vectors[task.heldout]
    rankings: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    diagnostics: dict[str, dict[str, Any]] = {}
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for name, sel in selectors.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ranking = np.asarray(sel.rank(inp, max(sizes)), dtype=np.int64)
            times.append(time.perf_counter() - start)
            _check_ranking(name, ranking, max(sizes), task.pool.size)
            if name in rankings and not np.array_equal(rankings[name], ranking):
                raise RuntimeError(f"method {name!r} is not deterministic: two runs ranked differently")
            rankings[name] = ranking
        seconds[name] = min(times)
        diagnostics[name] = dict(getattr(sel, "diagnostics", None) or {})
        LOG.info("%s / %s: ranked in %.2f s", task.label, name, seconds[name])
    rows: list[dict[str, Any]] = []
    for frac, k in zip(ks, sizes, strict=True):
        docs = {name: [corpus.tokens[task.pool[r]] for r in rk[:k]] for name, rk in rankings.items()}
        budget = min(sum(len(d) for d in ds) for ds in docs.values())
        for name, ranking in rankings.items():
            top = ranking[:k]
            ot = ot_distance(corpus.vectors[task.pool[top]], y_held, eps=eps)
            cut_docs, cut = truncate_to_budget(docs[name], budget)
            exact = rankings.get(EXACT)
            rows.append(
                {
                    "label": task.label,
                    "seed": seed,
                    "method": name,
                    "k_frac": frac,
                    "k": k,
                    "precision": precision(top, task.pool_is_target),
                    "distinct_precision": distinct_precision(top, task.sources, task.pool_is_target),
                    "redundancy": redundancy(top, task.sources),
                    "ceiling": task.ceiling(k),
                    "ot": ot.value,
                    "ot_converged": ot.converged,
                    "ppl": BigramKN(vocab_size).fit(docs[name]).perplexity(heldout),
                    "ppl_budget": BigramKN(vocab_size).fit(cut_docs, open_last=cut).perplexity(heldout),
                    "budget": budget,
                    "tokens": sum(len(d) for d in docs[name]),
                    "overlap_exact": (
                        len(np.intersect1d(top, exact[:k])) / k if exact is not None else float("nan")
                    ),
                    "seconds": seconds[name],
                    "diagnostics": diagnostics[name],
                }
            )
    return rows


def run(
    out_dir: Path,
    *,
    quick: bool = False,
    topics: list[str] | None = None,
    pool_size: int = 3000,
    target_size: int = 100,
    heldout_size: int = 50,
    pool_fraction: float = 0.1,
    ks: Sequence[float] = DEFAULT_KS,
    methods: Sequence[str] | None = None,
    eps: float = 0.1,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    cache_dir: Path | None = None,
    model_path: str | None = None,
    corpus: Sequence[Doc] | None = None,
    embeddings: np.ndarray | None = None,
    plots: bool = True,
    command: str | None = None,
    repeats: int | None = None,
    corpus_name: str | None = None,
    report_name: str | None = None,
    corpus_key: str | None = None,
    embed: str = "auto",
    near_copies: NearCopies | None = None,
) -> dict[str, Any]:
    """Run the evaluation and write ``out_dir/<report_name>.md`` (plots, JSON in ``out_dir/<report_name>/``).

    Parameters
    ----------
    out_dir : Path
        Report directory (``docs`` for the published report).
    quick : bool
        Smoke version: topics Mathematics and Technology (or the first two of ``topics``), pools of
        300 with 30 targets and 20 held-out texts.
    topics : list of str, optional
        Labels to build tasks for; default every label of the corpus.
    pool_size, target_size, heldout_size, pool_fraction : int, int, int, float
        Task shape (see :class:`~gotd.lab.evaluation.tasks.TaskSpec`); ignored when ``quick``.
    ks : sequence of float
        Selection sizes as fractions of the pool.
    methods : sequence of str, optional
        Registered method names; default :data:`~gotd.lab.evaluation.methods.DEFAULT_METHODS`.
    eps : float
        Entropic regularisation of the OT methods and of the OT-distance metric.
    seed : int
        Base seed of tasks and randomised methods when ``seeds`` is not given.
    seeds : sequence of int, optional
        Seeds to run: one task per (label, seed), each seed also seeding the randomised methods on
        its tasks; overrides ``seed``. Summaries then carry standard errors across seeds.
    cache_dir : Path, optional
        Embedding cache directory (default ``$GOTD_EVAL_CACHE`` or ``~/.cache/gotd-eval``).
    model_path : str, optional
        Local sentence-transformers model; default the packaged all-MiniLM-L6-v2.
    corpus : sequence of Doc, optional
        Labelled corpus; default the registered corpus ``corpus_key``.
    embeddings : numpy.ndarray, optional
        Precomputed unit embeddings of ``corpus``, shape ``(len(corpus), d)``; skips the encoder.
    plots : bool
        Write PNG plots (matplotlib, Agg).
    command : str, optional
        The command line that reproduces this run, quoted in the report.
    repeats : int, optional
        Rankings per method and task; the time reported is the fastest (default 3, quick 1).
    corpus_name : str, optional
        How the report names the corpus and its labels (default: the registered description of
        ``corpus_key``, or "a caller-supplied corpus").
    report_name : str, optional
        Stem of the report: ``out_dir/<report_name>.md`` and ``out_dir/<report_name>/``; default
        ``evaluation-<corpus key>`` (``docs/evaluation.md`` is the hand-written summary of them).
    corpus_key : str, optional
        Key of :data:`~gotd.lab.corpora.registry.CORPORA` (``wiki``, ``sotu``); default ``wiki``.
        Loaded only when ``corpus`` is not given.
    embed : {"auto", "used", "all"}
        Which texts to embed (ignored with ``embeddings``): ``used``, only the rows of the tasks,
        through the per-text cache (:func:`~gotd.lab.evaluation.embed.embed_texts`); ``all``, the whole
        corpus as one cached matrix (:func:`~gotd.lab.evaluation.embed.embed_corpus`); ``auto``, the
        whole-corpus matrix when it is already cached, else ``used``.
    near_copies : (float, int), optional
        Near-copy stress ``(frac, copies)``: see :mod:`gotd.lab.evaluation.stress`.

    Returns
    -------
    dict
        ``settings``, ``tasks`` (labels), ``environment``, ``embedding``, ``rows`` (per task, seed,
        method and k), ``summary`` (means and standard errors per method and k, see
        :func:`~gotd.lab.evaluation.summary.summarise`) and ``seconds`` (total wall time).

    Raises
    ------
    ValueError
        For an unknown corpus key, topic, method or embed mode, an empty ``seeds`` or a task that
        cannot be drawn.
    """
    began = time.perf_counter()
    key = check_corpus_key(corpus_key if corpus_key is not None else DEFAULT_CORPUS)
    if embed not in EMBED_MODES:
        raise ValueError(f"unknown embed mode {embed!r}; choose from {', '.join(EMBED_MODES)}")
    seed_list = [int(s) for s in seeds] if seeds is not None else [seed]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct and at least one, got {seed_list}")
    registered = corpus is None or corpus_key is not None
    docs = tuple(corpus) if corpus is not None else load_corpus(key)[0]
    name = corpus_name or (CORPORA[key][1] if registered else "a caller-supplied corpus")
    labels = tuple(d.topic for d in docs)
    shape = QUICK_SPEC if quick else TaskSpec(pool_size, target_size, heldout_size, pool_fraction)
    spec = replace(shape, seed=seed_list[0])
    chosen = choose_topics(labels, topics, quick, QUICK_TOPICS)
    tasks = [(s, build_task(labels, t, replace(shape, seed=s))) for s in seed_list for t in chosen]
    names = list(methods) if methods is not None else list(DEFAULT_METHODS)
    n_repeats = repeats if repeats is not None else (1 if quick else 3)
    options = MethodOptions(eps=eps)
    selectors = {n: make_method(n, options) for n in names}
    texts = tuple(normalise_text(d.text) for d in docs)
    used = np.unique(np.concatenate([np.concatenate([t.target, t.heldout, t.pool]) for _, t in tasks]))
    vectors, emb_info = _embeddings(docs, texts, used, embeddings, embed, cache_dir, model_path)
    if near_copies is not None:
        encode = text_encoder(model_path, cache_dir)
        tasks, extra, src, extra_vectors = stress_tasks(
            tasks, [d.id for d in docs], texts, near_copies, encode, vectors
        )
        texts, labels = texts + tuple(extra), labels + tuple(labels[i] for i in src.tolist())
        vectors, used = np.concatenate([vectors, extra_vectors]), np.arange(len(texts))
    tokens: list[tuple[str, ...]] = [()] * len(texts)  # only the rows of the tasks are scored
    for i in used.tolist():
        tokens[i] = tuple(tokenize(texts[i]))
    data = Corpus(texts, labels, tuple(tokens), vectors)
    rows: list[dict[str, Any]] = []
    for s, task in tasks:
        LOG.info("task %s, seed %d: pool %d (%d of the label)", task.label, s, task.pool.size, task.positives)
        rows.extend(evaluate_task(task, data, selectors, ks, eps=eps, seed=s, repeats=n_repeats))
    settings = {
        **asdict(spec),
        "seeds": seed_list,
        "quick": quick,
        "topics": chosen,
        "ks": list(ks),
        "methods": names,
        "eps": eps,
        "repeats": n_repeats,
        "positives": {t.label: t.positives for s, t in tasks if s == seed_list[0]},
        "selection_config": _selection_defaults(names),
        "command": command,
        "corpus": name,
        "corpus_key": key if registered else None,
        "corpus_size": len(docs),
        "near_copies": list(near_copies) if near_copies is not None else None,
    }
    result: dict[str, Any] = {
        "settings": settings,
        "tasks": chosen,
        "environment": environment(),
        "embedding": emb_info,
        "rows": rows,
        "summary": summarise(rows),
        "seconds": time.perf_counter() - began,
    }
    write_report(out_dir, result, plots=plots, name=report_name or f"evaluation-{key}")
    LOG.info("evaluation written to %s in %.0f s", out_dir, result["seconds"])
    return result


def _selection_defaults(names: Sequence[str]) -> dict[str, Any] | None:
    """The solver settings GOT-D methods run with (``SelectionConfig`` defaults), if any runs."""
    if not any(n.startswith("gotd-") for n in names):
        return None
    from gotd.server.selection.modes import SelectionConfig

    return {k: v for k, v in asdict(SelectionConfig()).items() if k not in ("mode", "eps", "seed")}


def _check_ranking(name: str, ranking: np.ndarray, k: int, n: int) -> None:
    """A method's output must be ``k`` distinct pool rows."""
    if (
        ranking.shape != (k,)
        or np.unique(ranking).size != k
        or (k and (ranking.min() < 0 or ranking.max() >= n))
    ):
        raise RuntimeError(f"method {name!r} returned an invalid ranking (need {k} distinct rows of {n})")


def _embeddings(
    docs: Sequence[Doc],
    texts: Sequence[str],
    used: np.ndarray,
    given: np.ndarray | None,
    embed: str,
    cache_dir: Path | None,
    model_path: str | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Corpus embeddings: given, or from the caches (rows outside ``used`` are zero unless ``all``)."""
    if given is not None:
        if given.shape[0] != len(docs) or given.ndim != 2:
            raise ValueError(f"embeddings must have shape ({len(docs)}, d), got {given.shape}")
        info = {
            "model_id": "caller-supplied vectors",
            "encode_seconds": 0.0,
            "load_seconds": 0.0,
            "cached": True,
            "texts": 0,
            "mode": "given",
        }
        return np.ascontiguousarray(given, dtype=np.float32), info
    from gotd.server.ingest.embedder import DEFAULT_MODEL_ID, Embedder

    model_id = DEFAULT_MODEL_ID if model_path is None else Path(model_path).expanduser().resolve().name
    ids = [d.id for d in docs]
    whole = embedding_cache_path(ids, texts, model_id=model_id, cache_dir=cache_dir)
    if embed == "all" or (embed == "auto" and whole.is_file()):
        rows = np.arange(len(docs))
        emb = embed_corpus(ids, texts, lambda: Embedder(model_path), model_id=model_id, cache_dir=cache_dir)
        mode = "all"
    else:
        rows = used
        picked = [texts[i] for i in rows.tolist()]
        emb = embed_texts(picked, lambda: Embedder(model_path), model_id=model_id, cache_dir=cache_dir)
        mode = "used"
    vectors = np.zeros((len(docs), emb.vectors.shape[1]), dtype=np.float32)
    vectors[rows] = emb.vectors
    info = {
        "model_id": model_id,
        "encode_seconds": emb.encode_seconds,
        "load_seconds": emb.load_seconds,
        "cached": emb.cached,
        "texts": int(rows.size),
        "mode": mode,
        "path": str(emb.path),
    }
    return vectors, info
