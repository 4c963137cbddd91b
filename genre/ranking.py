"""Entry points for training and evaluating the ranker: data, text vectors, config wiring.

Item text vectors come from the serving-side ONNX text encoder, so the ranker
is trained on exactly the vectors the workers will feed it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from genre.core.config import GenreConfig
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


def text_vectors(cfg: GenreConfig, items: list[ItemUpsert], console: Console) -> np.ndarray:
    """Encode item text with the exported ONNX encoder; cached per encoder version and text."""
    from genre.workers.text_encoder import TextEncoder

    encoder = TextEncoder.from_manifest(
        cfg.path(cfg.encoder.dir), cfg.encoder.providers, threads=cfg.encoder.threads
    )
    texts = [i.encoder_text() for i in items]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = cfg.path(f"vectors/{encoder.version}-{digest}.npy")
    if cache.is_file():
        return np.load(cache)
    with console.status(f"encoding {len(texts)} item texts with {encoder.version}..."):
        vectors = encoder.encode(texts, batch_size=cfg.encoder.batch_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def train_config(cfg: GenreConfig, **overrides: Any) -> Any:
    """TrainConfig from ``ranker.train`` with CLI overrides (None = keep)."""
    from genre.model_export.train import TrainConfig

    t = cfg.ranker.train
    values = {
        "epochs": t.epochs,
        "patience": t.patience,
        "batch_size": t.batch_size,
        "negatives": t.negatives,
        "lr": t.lr,
        "dim": t.dim,
        "heads": t.heads,
        "seed": t.seed,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def feature_spec(cfg: GenreConfig) -> Any:
    """FeatureSpec from the stream's own rules in ``streams`` (training must match serving)."""
    from genre.model_export.replay import FeatureSpec

    s = cfg.streams
    return FeatureSpec(
        trending_half_life_s=s.trending_half_life_s,
        edge_half_life_s=s.edge_half_life_s,
        co_click_window=s.co_click_window,
        user_vector_half_life_s=float(s.user_vector.params.get("half_life_s", 86400.0)),
        history_len=s.history_size,
    )


def run_evaluate(
    cfg: GenreConfig,
    log: ClickLog,
    *,
    models: list[str] | None,
    out_dir: Path,
    console: Console,
    epochs: int | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Train GENRE and the baselines on one split, test them all, save reports and checkpoint."""
    from genre.model_export.evaluate import evaluate_models, results_table, write_report
    from genre.model_export.replay import build_interactions
    from genre.model_export.train import save_checkpoint, torch_threads
    from genre.model_export.train import write_report as write_training_report

    data = build_interactions(log.items, log.clicks)
    vectors = text_vectors(cfg, log.items, console)
    baselines = [m for m in (models or []) if m != "genre"] if models else None
    include_genre = not models or "genre" in models
    overrides: dict[str, dict[str, Any]] = {}
    if quick:  # small caps for smoke tests; figures from quick runs are not comparable
        for name in baselines or ["bpr", "sasrec"]:
            if name in ("bpr", "sasrec"):
                overrides[name] = {"epochs": 2}
    threads = cfg.ranker.train.threads
    for name in ("bpr", "sasrec"):
        if threads and (baselines is None or name in baselines):
            overrides.setdefault(name, {})["num_threads"] = threads
    spec = feature_spec(cfg)
    train = train_config(cfg, epochs=epochs)
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
        )
    console.print(results_table(report))
    md, png = write_report(report, out_dir)
    summary = report.summary()
    summary["report"] = {"markdown": str(md), "plot": str(png)}
    if report.genre is not None and report.genre.result is not None:
        ckpt = save_checkpoint(
            cfg.path(cfg.ranker.checkpoint),
            report.genre.result,
            data,
            spec,
            {"dataset": log.name, "metrics": summary["models"]},
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
    from genre.model_export.evaluate import evaluate_models
    from genre.model_export.replay import build_interactions
    from genre.model_export.train import save_checkpoint, torch_threads, write_report

    data = build_interactions(log.items, log.clicks)
    vectors = text_vectors(cfg, log.items, console)
    spec = feature_spec(cfg)
    with torch_threads(cfg.ranker.train.threads):
        report = evaluate_models(
            data,
            vectors,
            dataset=log.name,
            spec=spec,
            train=train_config(cfg, epochs=epochs),
            baselines=[],
            console=console,
        )
    assert report.genre is not None and report.genre.result is not None
    result = report.genre.result
    ckpt = save_checkpoint(
        cfg.path(cfg.ranker.checkpoint),
        result,
        data,
        spec,
        {"dataset": log.name, "metrics": report.models},
    )
    js, png = write_report(out_dir, result, report.models)
    return {
        "checkpoint": str(ckpt),
        "best_epoch": result.best_epoch,
        "epochs": result.history,
        "test": report.models["genre"],
        "report": {"json": str(js), "plot": str(png)},
        "seconds": round(report.seconds, 1),
    }
