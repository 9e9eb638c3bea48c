"""Lab commands of ``gotd`` (extra ``gotd[lab]``): ``demo``, ``eval`` and ``bench ...``.

Reached through the dispatcher in :mod:`gotd.client.cli`, which imports this module only when one of
these commands runs and names the extra to install when it is missing. Heavy modules (torch, the
evaluation) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "evaluate", "parse_names", "parse_seeds"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="gotd lab commands")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each writes docs/benchmarks/<name>.md")
app.add_typer(bench_app, name="bench")


def parse_seeds(text: str | None) -> list[int] | None:
    """Seeds from a comma-separated list (``"0,1,2"``); None for an absent or blank option.

    Raises
    ------
    typer.BadParameter
        For a non-integer item or a repeated seed.
    """
    if text is None or not text.strip():
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        seeds = [int(t) for t in items]
    except ValueError:
        raise typer.BadParameter(f"seeds must be comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise typer.BadParameter(f"seeds must be distinct, got {text!r}")
    return seeds


def parse_names(*sources: list[str] | str | None) -> list[str] | None:
    """Names from repeated options and comma-separated lists, in order without repeats; None if none."""
    names: list[str] = []
    for source in sources:
        for item in [source] if isinstance(source, str) else source or []:
            for name in (n.strip() for n in item.split(",")):
                if name and name not in names:
                    names.append(name)
    return names or None


def evaluate(
    out: Annotated[Path, typer.Option("--out", help="report directory")] = Path("docs"),
    quick: Annotated[bool, typer.Option("--quick", help="tiny smoke version")] = False,
    corpus: Annotated[
        str, typer.Option("--corpus", help="corpus: wiki (topics), sotu (presidents), bible (genres)")
    ] = "wiki",
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="task label (repeat); default all")
    ] = None,
    pool_size: Annotated[int, typer.Option(help="candidates per task")] = 3000,
    target_size: Annotated[int, typer.Option(help="target texts per task")] = 100,
    heldout_size: Annotated[int, typer.Option(help="held-out texts of the target label per task")] = 50,
    pool_fraction: Annotated[float, typer.Option(help="share of the target label in the pool")] = 0.1,
    k: Annotated[list[float] | None, typer.Option("--k", help="k as a fraction of the pool (repeat)")] = None,
    method: Annotated[list[str] | None, typer.Option("--method", help="method (repeat); default all")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated methods")] = None,
    eps: Annotated[float, typer.Option(help="entropic regularisation")] = 0.1,
    seed: Annotated[int, typer.Option(help="task sampling seed (one seed)")] = 0,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="comma-separated seeds, e.g. 0,1,2; overrides --seed")
    ] = None,
    repeats: Annotated[int | None, typer.Option(help="timed repeats per method (fastest kept)")] = None,
    model_path: Annotated[str | None, typer.Option(help="local sentence-transformers model")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="where embeddings are cached")] = None,
    embed: Annotated[
        str, typer.Option("--embed", help="auto | used (only the tasks' texts) | all (whole corpus)")
    ] = "auto",
    report_name: Annotated[
        str | None, typer.Option("--report-name", help="report stem: OUT/NAME.md (default evaluation-CORPUS)")
    ] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="skip the PNG plots")] = False,
    near_copies: Annotated[
        str | None,
        typer.Option("--near-copies", help="stress: FRAC[,COPIES] of the texts get near-copies (e.g. 0.1,4)"),
    ] = None,
) -> None:
    """Selection quality on a labelled corpus: GOT-D modes vs DSIR, centroid cosine, random."""
    from gotd.lab.corpora.registry import CORPORA
    from gotd.lab.evaluation.run import DEFAULT_KS, EMBED_MODES, run

    if corpus not in CORPORA:
        raise typer.BadParameter(
            f"unknown corpus {corpus!r}; choose from {', '.join(CORPORA)}", param_hint="--corpus"
        )
    if embed not in EMBED_MODES:
        raise typer.BadParameter(f"choose from {', '.join(EMBED_MODES)}", param_hint="--embed")
    from gotd.lab.evaluation.stress import parse_near_copies

    try:
        near = parse_near_copies(near_copies) if near_copies is not None else None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--near-copies") from None
    seed_list = parse_seeds(seeds)
    names = parse_names(method, methods)
    stem = report_name or f"evaluation-{corpus}"
    try:
        result = run(
            out, quick=quick, topics=topic or None, pool_size=pool_size, target_size=target_size,
            heldout_size=heldout_size, pool_fraction=pool_fraction, ks=tuple(k) if k else DEFAULT_KS,
            methods=names, eps=eps, seed=seed, seeds=seed_list, repeats=repeats, model_path=model_path,
            cache_dir=cache_dir, plots=not no_plots, command=" ".join(["gotd", *sys.argv[1:]]),
            corpus_key=corpus, report_name=stem, embed=embed, near_copies=near,
        )  # fmt: skip
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    n_seeds = len(seed_list or [seed])
    labels = len(result.get("tasks", []))
    typer.echo(f"evaluation written to {out / stem}.md: {labels} labels × {n_seeds} seeds")


app.command("eval")(evaluate)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="demo store (kept: a second run is fast)")] = Path(
        ".gotd-demo"
    ),
    pool_size: Annotated[int, typer.Option(help="candidates in the demo pool")] = 1500,
    topic: Annotated[str, typer.Option(help="target topic")] = "Mathematics",
) -> None:
    """End to end on the wiki corpus: serve, ingest, select, report precision and cold vs cached time."""
    from gotd.lab.demo import run_demo

    run_demo(data_dir=data_dir, pool_size=pool_size, topic=topic)


BENCHMARKS = {
    "ot": "OT engine vs POT and the GEMM+logsumexp floor.",
    "ingest": "Ingest vs the bare encoder; vector ingest; bulk read.",
    "service": "Cold vs cached Select, grown pool, first batch latency, concurrency, fused vs embedding.",
    "ray": "Sharded scoring on Ray workers vs the in-process pass (needs the ray extra).",
    "nearcopy": "Near-copy skipping: GEMM vs FAISS walk, Select with skipping on vs off.",
    "incremental": "Re-select after growth with a potential epoch vs cold; drift vs a fresh solve.",
    "scale": "Pools of 1M-10M candidates: ingest rate, cold and cached Select, peak RSS vs stored bytes.",
    "autocost": "Select with the validated cost vs its chosen setting named explicitly (cold, cached).",
}
Out = Annotated[Path, typer.Option("--out", help="output directory")]
Quick = Annotated[bool, typer.Option("--quick", help="tiny smoke version")]


def _bench(name: str, out: Path, quick: bool) -> None:
    module = importlib.import_module(f"gotd.lab.bench.{name}")
    result = module.run(out, quick=quick)
    typer.echo(f"bench {name}: {json.dumps(result, default=str)[:2000]}")


def _register(name: str, text: str) -> None:
    def command(out: Out = Path("docs/benchmarks"), quick: Quick = False) -> None:
        _bench(name, out, quick)

    command.__doc__ = text
    bench_app.command(name)(command)


for _name, _text in BENCHMARKS.items():
    _register(_name, _text)


@bench_app.command("all")
def bench_all(out: Out = Path("docs/benchmarks"), quick: Quick = False) -> None:
    """Every benchmark but scale (GiBs and tens of minutes: run it alone); ray only with its extra."""
    import importlib.util

    names = [
        n for n in BENCHMARKS if n != "scale" and (n != "ray" or importlib.util.find_spec("ray") is not None)
    ]
    for name in names:
        _bench(name, out, quick)
