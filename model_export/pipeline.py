"""Entry points for training and evaluating the ranker: data, text vectors, config wiring.

Item text vectors come from the serving-side ONNX text encoder, so the ranker
is trained on exactly the vectors the workers will feed it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from genre.core.config import GenreConfig, RankerTrainSettings
from genre.schemas import ClickEvent, ItemUpsert, Rejection, parse_record

EVAL_REPORT = "evaluation.json"


class RankingInputError(ValueError):
    """A click log or item file cannot be used; the message says which line and why."""


@dataclass(frozen=True)
class ClickLog:
    """A catalogue and a click log, with the name reports use."""

    name: str
    items: list[ItemUpsert]
    clicks: list[ClickEvent]


def load_click_log(
    cfg: GenreConfig, dataset: str | None, clicks: Path | None, items: Path | None
) -> ClickLog:
    """ml-100k (fetched into the cache) or JSONL files of ClickEvent and ItemUpsert records.

    A topic dump from ``genre tail ... --json`` or any producer's log works as
    long as each line is one record.
    """
    if clicks is not None or items is not None:
        if clicks is None or items is None:
            raise RankingInputError("--clicks and --items go together: a log needs its catalogue")
        return ClickLog(
            name=clicks.stem,
            items=_read_jsonl(items, ItemUpsert),
            clicks=_read_jsonl(clicks, ClickEvent),
        )
    if dataset not in (None, "ml-100k"):
        raise RankingInputError(f"unknown dataset {dataset!r}; available: ml-100k (or --clicks)")
    from genre.model_export.datasets import as_click_events, fetch_ml100k, load_ml100k

    ml = load_ml100k(fetch_ml100k(cfg.path("datasets")))
    return ClickLog("ml-100k", ml.items, list(as_click_events(ml)))


def _read_jsonl(path: Path, model: type[Any]) -> list[Any]:
    if not path.is_file():
        raise RankingInputError(f"{path} does not exist")
    out = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = parse_record(model, line.rstrip(b"\n"))
            if isinstance(record, Rejection):
                raise RankingInputError(
                    f"{path}:{n} is not a valid {model.__name__} ({record.reason}: "
                    f"{record.error}); fix or drop that line"
                )
            out.append(record)
    if not out:
        raise RankingInputError(f"{path} holds no {model.__name__} records")
    return out


def text_vectors(
    cfg: GenreConfig, items: list[ItemUpsert], console: Console, texts: list[str] | None = None
) -> np.ndarray:
    """Encode item text (``texts``, else each item's own) with the exported ONNX encoder."""
    return encode_texts(
        cfg, texts if texts is not None else [i.encoder_text() for i in items], console, "item"
    )


def encode_texts(cfg: GenreConfig, texts: list[str], console: Console, what: str) -> np.ndarray:
    """Unit vectors of ``texts`` from the serving encoder; cached per encoder version and text."""
    from genre.core.text_encoder import TextEncoder

    encoder = TextEncoder.from_manifest(
        cfg.path(cfg.encoder.dir), cfg.encoder.providers, threads=cfg.encoder.threads
    )
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = cfg.path(f"vectors/{encoder.version}-{digest}.npy")
    if cache.is_file():
        return np.load(cache)
    with console.status(f"encoding {len(texts)} {what} texts with {encoder.version}..."):
        vectors = encoder.encode(texts, batch_size=cfg.encoder.batch_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


@dataclass(frozen=True)
class LLMInputs:
    """What the LLM adds to a click log for training, as the stream would add it."""

    vectors: np.ndarray  # float32 [n_items, D]: enriched text when items are on
    profiles: Any  # ProfileTrack | None
    info: dict[str, Any]  # backend, switches, prompt versions, answer origins


def llm_inputs(
    cfg: GenreConfig,
    log: ClickLog,
    data: Any,
    console: Console,
    *,
    items: bool,
    profiles: bool,
    llm: Any = None,
) -> LLMInputs:
    """Item vectors (enriched when ``items``) and the profile track (when ``profiles``).

    Enrichment follows the item encoder: a failed answer leaves the raw text.
    Profiles follow the profile agent: due every ``llm.profiles.every_k_clicks``
    clicks, written from "Title (tags)" labels of the recent items, encoded.
    """
    from genre.llm.client import build_llm, enriched_text, item_label, profile_text
    from genre.model_export.replay import ProfileTrack, profile_schedule

    own = llm is None and (items or profiles)
    if own:
        llm = build_llm(cfg)
    info: dict[str, Any] = {
        "backend": llm.backend_name if llm is not None else None,
        "items": items,
        "profiles": profiles,
        "prompts": {
            "item": cfg.llm.prompts.item.version if items else None,
            "profile": cfg.llm.prompts.profile.version if profiles else None,
        },
    }
    try:
        texts = [i.encoder_text() for i in log.items]
        if items:
            with _progress(console) as progress:
                task = progress.add_task("enriching items", total=len(log.items))
                results = llm.enrich_items_sync(log.items, lambda: progress.advance(task))
            texts = [
                text if r.origin == "failed" else enriched_text(item, r.value)
                for item, r, text in zip(log.items, results, texts, strict=True)
            ]
            info["items_origin"] = _origins(results)
        vectors = text_vectors(cfg, log.items, console, texts)
        track = None
        if profiles:
            p = cfg.llm.profiles
            history = cfg.streams.history_size
            due = profile_schedule(data, p.every_k_clicks, p.recent_titles, history)
            labels = [item_label(i.title, i.category, i.tags) for i in log.items]
            unique = list(dict.fromkeys(items_ for _, items_ in due))
            with _progress(console) as progress:
                task = progress.add_task("writing user profiles", total=len(unique))
                answers = llm.profiles_sync(
                    [[labels[i] for i in key] for key in unique], lambda: progress.advance(task)
                )
            info["profiles_origin"] = _origins(answers)
            kept = [a.value for a in answers if a.value.interests]
            row_of: dict[tuple[int, ...], int] = {}
            for key, a in zip(unique, answers, strict=True):
                if a.value.interests:
                    row_of[key] = len(row_of)
            profile_vectors = np.zeros((0, vectors.shape[1]), np.float32)
            if kept:
                profile_vectors = encode_texts(
                    cfg, [profile_text(v) for v in kept], console, "profile"
                ).astype(np.float32)
            after = np.full(len(data), -1, np.int32)
            for e, key in due:
                after[e] = row_of.get(key, -1)
            track = ProfileTrack(after, profile_vectors.reshape(len(kept), vectors.shape[1]))
            info["profiles_written"] = int((after >= 0).sum())
        return LLMInputs(vectors, track, info)
    finally:
        if own and llm is not None:
            llm.close()


def _origins(results: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.origin] = counts.get(r.origin, 0) + 1
    return counts


def _progress(console: Console) -> Any:
    from genre.model_export.evaluate import make_progress

    return make_progress(console)


def train_settings(cfg: GenreConfig, **overrides: Any) -> RankerTrainSettings:
    """``ranker.train`` with CLI overrides (None = keep)."""
    return cfg.ranker.train.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def candidate_plan(cfg: GenreConfig) -> Any:
    """The scorer's candidate sources and pre-ranking, for the evaluation to replay."""
    from genre.core.features.candidates import source_specs
    from genre.model_export.replay import CandidatePlan

    return CandidatePlan(source_specs(cfg.scorer), cfg.ranker.rank_candidates)


def feature_spec(cfg: GenreConfig) -> Any:
    """The stream's own rules (``streams``) as the feature spec: training must match serving."""
    from genre.core.features import FeatureSpec

    return FeatureSpec.from_streams(cfg.streams)


def run_evaluate(
    cfg: GenreConfig,
    log: ClickLog,
    *,
    models: list[str] | None,
    out_dir: Path,
    console: Console,
    epochs: int | None = None,
    quick: bool = False,
    baseline_params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train GENRE and the baselines on one split, test them all, save reports and checkpoint.

    ``baseline_params``: constructor arguments per baseline (``genre tune --what
    baseline``'s best), for those of ``models`` that are evaluated."""
    from genre.model_export.evaluate import (
        evaluate_models,
        results_table,
        segments_table,
        write_report,
    )
    from genre.model_export.replay import build_interactions
    from genre.model_export.train import save_checkpoint, torch_threads
    from genre.model_export.train import write_report as write_training_report

    data = build_interactions(log.items, log.clicks)
    llm = llm_inputs(
        cfg, log, data, console, items=cfg.llm.items.enabled, profiles=cfg.llm.profiles.enabled
    )
    vectors = llm.vectors
    baselines = [m for m in (models or []) if m != "genre"] if models else None
    include_genre = not models or "genre" in models
    overrides: dict[str, dict[str, Any]] = {
        name: dict(kwargs)
        for name, kwargs in (baseline_params or {}).items()
        if baselines is None or name in baselines
    }
    if quick:  # small caps for smoke tests; figures from quick runs are not comparable
        for name in baselines or ["bpr", "sasrec", "lightgcn"]:
            if name in ("bpr", "sasrec", "lightgcn"):
                overrides.setdefault(name, {})["epochs"] = 2
    threads = cfg.ranker.train.threads
    for name in ("bpr", "sasrec", "lightgcn"):
        if threads and (baselines is None or name in baselines):
            overrides.setdefault(name, {})["num_threads"] = threads
    spec = feature_spec(cfg)
    train = train_settings(cfg, epochs=epochs)
    with torch_threads(threads):
        report = evaluate_models(
            data,
            vectors,
            dataset=log.name,
            spec=spec,
            train=train,
            baselines=baselines,
            baseline_overrides=overrides,
            include_genre=include_genre,
            console=console,
            profiles=llm.profiles,
            plan=candidate_plan(cfg),
        )
    report.extra["llm"] = llm.info
    console.print(results_table(report))
    by_segment = segments_table(report)
    if by_segment is not None:
        console.print(by_segment)
    md, png = write_report(report, out_dir)
    summary = report.summary()
    summary["report"] = {"markdown": str(md), "plot": str(png)}
    if report.genre is not None and report.genre.result is not None:
        ckpt = save_checkpoint(
            cfg.path(cfg.ranker.checkpoint),
            report.genre.result,
            data,
            report.genre.spec,
            {"dataset": log.name, "metrics": summary["models"], "llm": llm.info},
        )
        summary["checkpoint"] = str(ckpt)
        write_training_report(out_dir, report.genre.result, summary["models"])
    (out_dir / EVAL_REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_train(
    cfg: GenreConfig,
    log: ClickLog,
    *,
    out_dir: Path,
    console: Console,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train the GENRE ranker only; write the checkpoint and the training report."""
    from genre.model_export.replay import build_interactions
    from genre.model_export.train import write_report

    data = build_interactions(log.items, log.clicks)
    llm = llm_inputs(
        cfg, log, data, console, items=cfg.llm.items.enabled, profiles=cfg.llm.profiles.enabled
    )
    report, ckpt = fit_genre(cfg, log, data, llm, console, epochs=epochs, save=True)
    assert report.genre is not None and report.genre.result is not None
    result = report.genre.result
    js, png = write_report(out_dir, result, report.models)
    return {
        "checkpoint": str(ckpt),
        "best_epoch": result.best_epoch,
        "epochs": result.history,
        "test": report.models["genre"],
        "report": {"json": str(js), "plot": str(png)},
        "seconds": round(report.seconds, 1),
        "llm": llm.info,
    }


#: Where ``genre train --model graph`` writes when no ``graph`` source names a ``dir``.
GRAPH_DIR = "models/graph"


def graph_dir(cfg: GenreConfig) -> Path:
    """The graph model's folder: the ``dir`` of the configured ``graph`` source, if any."""
    for source in cfg.scorer.candidates:
        if source.name == "graph" and "dir" in source.params:
            return cfg.path(str(source.params["dir"]))
    return cfg.path(GRAPH_DIR)


def run_train_graph(cfg: GenreConfig, log: ClickLog, *, console: Console) -> dict[str, Any]:
    """Train the graph model (LightGCN) on the temporal split, test it, and write its
    item embeddings where the ``graph`` candidate source reads them."""
    from genre.core.features.graph_embedding import save_graph_embeddings
    from genre.model_export.evaluate import evaluate_models, results_table
    from genre.model_export.graph_model import LightGCN
    from genre.model_export.replay import build_interactions
    from genre.model_export.train import torch_threads

    data = build_interactions(log.items, log.clicks)
    llm = llm_inputs(cfg, log, data, console, items=cfg.llm.items.enabled, profiles=False)
    threads = cfg.ranker.train.threads
    with torch_threads(threads):
        report = evaluate_models(
            data,
            llm.vectors,
            dataset=log.name,
            spec=feature_spec(cfg),
            baselines=["lightgcn"],
            baseline_overrides={"lightgcn": {"num_threads": threads}} if threads else None,
            include_genre=False,
            console=console,
            plan=candidate_plan(cfg),
        )
    console.print(results_table(report))
    model = report.baselines["lightgcn"]
    assert isinstance(model, LightGCN)
    trained = model.trained_items()
    folder = graph_dir(cfg)
    info = {
        "model": "lightgcn",
        "dataset": log.name,
        "trained_on": "train split (first 80% of clicks); epochs chosen on validation",
        "params": model.params,
        "fit_seconds": report.fit_seconds["lightgcn"],
        "test": report.models["lightgcn"],
        "written_at": time.time(),
    }
    ids = [data.item_ids[i] for i in np.flatnonzero(trained)]
    manifest = save_graph_embeddings(folder, ids, model.item_embeddings()[trained], info)
    return {"dir": str(folder), "manifest": str(manifest), **info, "models": report.models}


def fit_genre(
    cfg: GenreConfig,
    log: ClickLog,
    data: Any,
    inputs: LLMInputs,
    console: Console,
    *,
    epochs: int | None,
    save: bool,
) -> tuple[Any, Path | None]:
    """Train and test the GENRE ranker alone on ``inputs``; with ``save``, write its
    checkpoint (recording what the LLM added). Returns the report and the checkpoint."""
    from genre.model_export.evaluate import evaluate_models
    from genre.model_export.train import save_checkpoint, torch_threads

    with torch_threads(cfg.ranker.train.threads):
        report = evaluate_models(
            data,
            inputs.vectors,
            dataset=log.name,
            spec=feature_spec(cfg),
            train=train_settings(cfg, epochs=epochs),
            baselines=[],
            console=console,
            profiles=inputs.profiles,
        )
    assert report.genre is not None and report.genre.result is not None
    if not save:
        return report, None
    ckpt = save_checkpoint(
        cfg.path(cfg.ranker.checkpoint),
        report.genre.result,
        data,
        report.genre.spec,
        {"dataset": log.name, "metrics": report.models, "llm": inputs.info},
    )
    return report, ckpt


#: The ablation's variants: name -> (item enrichment, user profiles).
ABLATION_VARIANTS = {"off": (False, False), "items": (True, False), "items+profiles": (True, True)}
ABLATION_REPORT = "ablation_enrichment"


def run_ablation(
    cfg: GenreConfig,
    log: ClickLog,
    *,
    out_dir: Path,
    console: Console,
    epochs: int | None = None,
) -> dict[str, Any]:
    """GENRE trained and tested three times on one split and seed: without the LLM, with
    enriched items, with enriched items and profiles. Saves the checkpoint of the variant
    the config serves (``llm.items.enabled`` / ``llm.profiles.enabled``)."""
    from genre.llm.client import build_llm
    from genre.model_export.replay import build_interactions

    data = build_interactions(log.items, log.clicks)
    served = (cfg.llm.items.enabled, cfg.llm.profiles.enabled)
    llm = build_llm(cfg)
    variants: dict[str, dict[str, Any]] = {}
    try:
        for name, (items, profiles) in ABLATION_VARIANTS.items():
            console.rule(f"ablation: {name}")
            inputs = llm_inputs(cfg, log, data, console, items=items, profiles=profiles, llm=llm)
            report, ckpt = fit_genre(
                cfg, log, data, inputs, console, epochs=epochs, save=(items, profiles) == served
            )
            assert report.genre is not None and report.genre.result is not None
            metrics = report.models["genre"]
            variants[name] = {
                "hr@10": metrics["hr@10"],
                "ndcg@10": metrics["ndcg@10"],
                "mrr": metrics["mrr"],
                "coverage@10": metrics["coverage@10"],
                "best_epoch": report.genre.result.best_epoch,
                "seconds": round(report.seconds, 1),
                "llm": inputs.info,
            }
            if ckpt is not None:
                variants[name]["checkpoint"] = str(ckpt)
    finally:
        backend = llm.backend_name
        llm.close()
    summary = {
        "dataset": log.name,
        "seed": cfg.ranker.train.seed,
        "split": {"test": int((data.split == 2).sum())},
        "backend": backend,
        "ablation": variants,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{ABLATION_REPORT}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / f"{ABLATION_REPORT}.md").write_text(ablation_markdown(summary))
    return summary


def ablation_markdown(summary: dict[str, Any]) -> str:
    """The ablation as a markdown table."""
    lines = [
        f"# LLM enrichment ablation: {summary['dataset']}, backend {summary['backend']}",
        "",
        f"GENRE ranker, same temporal split and seed ({summary['seed']}); "
        f"{summary['split']['test']} test clicks, full ranking.",
        "",
        "| variant | HR@10 | NDCG@10 | MRR | coverage@10 | best epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in summary["ablation"].items():
        lines.append(
            f"| {name} | {v['hr@10']:.4f} | {v['ndcg@10']:.4f} | {v['mrr']:.4f} | "
            f"{v['coverage@10']:.4f} | {v['best_epoch']} |"
        )
    return "\n".join(lines) + "\n"
