"""The accuracy/diversity frontier: GENRE's test scores re-ranked by the scorer's
diversity step over a sweep of rules, beside the baselines, in one test replay.

The ranker is trained once (or loaded from ``ranker.checkpoint`` with
``from_checkpoint``); every rule re-ranks the same scores, so the sweep costs one
replay, not one training per lambda. Writes ``diversity_frontier.json`` and
``diversity_frontier.png`` (NDCG@10 against ILD@10).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from genre.core.config import GenreConfig
from genre.core.features.diversity import DiversityRule
from genre.model_export.pipeline import (
    ClickLog,
    candidate_plan,
    feature_spec,
    llm_inputs,
    train_settings,
)

FRONTIER_REPORT = "diversity_frontier"
#: The issue's target: within 1% of the best NDCG@10, at least 20% more ILD@10.
NDCG_TOLERANCE = 0.01
ILD_GAIN = 0.20


def parse_sweep(text: str, cfg: GenreConfig) -> list[DiversityRule]:
    """``"1,0.9,0.8:0.2"``: lambdas, each optionally ``:popularity_weight`` (default:
    ``scorer.diversity.popularity_weight``), N from ``scorer.diversity.candidates``."""
    d = cfg.scorer.diversity
    rules = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lam, _, pop = part.partition(":")
        rule = DiversityRule(float(lam), float(pop) if pop else d.popularity_weight, d.candidates)
        if not 0.0 <= rule.mmr_lambda <= 1.0 or rule.popularity_weight < 0:
            raise ValueError(f"bad sweep entry {part!r}: lambda in [0, 1], popularity weight >= 0")
        rules.append(rule)
    if not rules:
        raise ValueError("--diversity-sweep needs at least one lambda, e.g. 1,0.9,0.8")
    return rules


def load_genre(cfg: GenreConfig, data: Any, vectors: np.ndarray, spec: Any) -> Any:
    """A ``GenreModel`` from ``ranker.checkpoint`` (no training), its ids mapped onto ``data``."""
    from genre.model_export.evaluate import GenreModel
    from genre.model_export.train import TrainResult, load_checkpoint

    model, blob = load_checkpoint(cfg.path(cfg.ranker.checkpoint))
    row = {item: i + 1 for i, item in enumerate(blob["id_vocab"])}
    id_of_item = np.asarray([row.get(item, 0) for item in data.item_ids], np.int64)
    trained = tuple(blob["feature_spec"]["feature_names"])
    if trained != tuple(spec.feature_names):
        raise ValueError(
            f"the checkpoint's ranker takes features {trained}, this config gives "
            f"{tuple(spec.feature_names)}; re-train it (genre train) or match the config"
        )
    genre = GenreModel(train_settings(cfg), spec)
    result = TrainResult(model, id_of_item, blob.get("history", []), blob.get("best_epoch", 0))
    genre.load(result, vectors)
    return genre


def run_frontier(
    cfg: GenreConfig,
    log: ClickLog,
    rules: Sequence[DiversityRule],
    *,
    models: list[str] | None,
    out_dir: Path,
    console: Console,
    from_checkpoint: bool,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Evaluate GENRE (trained, or loaded) re-ranked by each rule, and the baselines."""
    from genre.model_export.evaluate import diversity_name, evaluate_models, results_table
    from genre.model_export.replay import PROFILE_FEATURE, build_interactions
    from genre.model_export.train import torch_threads

    data = build_interactions(log.items, log.clicks)
    llm = llm_inputs(
        cfg, log, data, console, items=cfg.llm.items.enabled, profiles=cfg.llm.profiles.enabled
    )
    spec = feature_spec(cfg)
    if llm.profiles is not None and PROFILE_FEATURE not in spec.feature_names:
        spec = replace(spec, feature_names=(*spec.feature_names, PROFILE_FEATURE))
    genre = load_genre(cfg, data, llm.vectors, spec) if from_checkpoint else None
    baselines = [m for m in (models or []) if m != "genre"] if models else None
    with torch_threads(cfg.ranker.train.threads):
        report = evaluate_models(
            data,
            llm.vectors,
            dataset=log.name,
            spec=spec,
            train=train_settings(cfg, epochs=epochs),
            baselines=baselines,
            console=console,
            profiles=llm.profiles,
            plan=candidate_plan(cfg),
            genre_model=genre,
            diversity=rules,
        )
    console.print(results_table(report))
    sweep = []
    for rule in rules:
        row = report.models[diversity_name(rule)]
        sweep.append(
            {"lambda": rule.mmr_lambda, "popularity_weight": rule.popularity_weight, **row}
        )
    summary = {
        **report.summary(),
        "ranker": "checkpoint" if from_checkpoint else "trained",
        "candidates": rules[0].candidates,
        "frontier": sweep,
        "target": target_verdict(sweep),
        "llm": llm.info,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{FRONTIER_REPORT}.json"
    js.write_text(json.dumps(summary, indent=2) + "\n")
    summary["report"] = {"json": str(js), "plot": str(plot_frontier(summary, out_dir))}
    return summary


def target_verdict(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Does a rule keep NDCG@10 within 1% of the best while raising ILD@10 by >= 20% over
    the undiversified list (the sweep's lambda=1, popularity 0 point)?"""
    base = next((r for r in sweep if r["lambda"] >= 1.0 and r["popularity_weight"] == 0.0), None)
    if base is None:
        return {"met": None, "why": "the sweep has no lambda=1, popularity 0 point to compare"}
    best = max(r["ndcg@10"] for r in sweep)
    ok = [r for r in sweep if r["ndcg@10"] >= best * (1 - NDCG_TOLERANCE)]
    top = max(ok, key=lambda r: r["ild@10"])
    gain = top["ild@10"] / base["ild@10"] - 1.0 if base["ild@10"] else 0.0
    return {
        "met": gain >= ILD_GAIN,
        "best_ndcg@10": best,
        "baseline_ild@10": base["ild@10"],
        "chosen": {"lambda": top["lambda"], "popularity_weight": top["popularity_weight"]},
        "chosen_ndcg@10": top["ndcg@10"],
        "chosen_ild@10": top["ild@10"],
        "ild_gain": round(gain, 4),
    }


def plot_frontier(summary: dict[str, Any], out_dir: Path) -> Path:
    """NDCG@10 against ILD@10: the sweep as a line, each baseline as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for pop in sorted({r["popularity_weight"] for r in summary["frontier"]}):
        pts = sorted(
            (r for r in summary["frontier"] if r["popularity_weight"] == pop),
            key=lambda r: -r["lambda"],
        )
        ax.plot(
            [r["ild@10"] for r in pts],
            [r["ndcg@10"] for r in pts],
            marker="o",
            label=f"GENRE + MMR (popularity weight {pop:g})",
        )
        for r in pts:
            ax.annotate(f"{r['lambda']:g}", (r["ild@10"], r["ndcg@10"]), fontsize=7)
    for name, row in summary["models"].items():
        if "+mmr" in name or "ild@10" not in row:
            continue
        ax.scatter([row["ild@10"]], [row["ndcg@10"]], marker="x")
        ax.annotate(name, (row["ild@10"], row["ndcg@10"]), fontsize=7)
    target = summary.get("target") or {}
    if target.get("baseline_ild@10"):
        ax.axvline(target["baseline_ild@10"] * (1 + ILD_GAIN), ls="--", lw=0.8, color="grey")
        ax.axhline(target["best_ndcg@10"] * (1 - NDCG_TOLERANCE), ls="--", lw=0.8, color="grey")
        ax.annotate(
            "target: right of and above the dashed lines",
            (0.01, 0.01),
            xycoords="axes fraction",
            fontsize=7,
            color="grey",
        )
    ax.set_xlabel("intra-list diversity@10 (mean pairwise cosine distance)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{summary['dataset']}: accuracy/diversity frontier (labels: lambda)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / f"{FRONTIER_REPORT}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
