"""``genre evaluate``: GENRE's ranker against baselines on one temporal split, full ranking.

Protocol (the same for every model, in one run):

1. Events are ordered by time; the first 80% train, the next 10% validate, the
   last 10% test (``replay.temporal_split``).
2. Learned weights are fitted on training clicks (validation picks epochs and
   the popularity half-life) and then frozen.
3. The stream's state (histories, decayed popularity, co-click edges, item-kNN
   counts, user content vectors) keeps updating through validation and test,
   exactly as the live system's would.
4. Each test click is ranked against every catalogue item its user has not
   interacted with before: no sampled negatives.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genre.core.config import RankerTrainSettings
from genre.core.features.candidates import SourceSpec
from genre.core.features.diversity import DiversityRule, diversify
from genre.core.features.graph_embedding import GraphEmbeddings
from genre.model_export.baselines import Baseline
from genre.model_export.graph_model import LightGCN
from genre.model_export.metrics import SEGMENTS, K, RankingMetrics, top_k
from genre.model_export.replay import (
    PROFILE_FEATURE,
    TEST,
    TRAIN,
    VALID,
    CandidatePlan,
    FeatureSpec,
    Interactions,
    ProfileTrack,
    QueryBatch,
    StreamReplay,
    snapshot,
    stack_queries,
)
from genre.model_export.train import (
    RankerInputs,
    TrainingSampler,
    TrainResult,
    score_queries,
    train_ranker,
)
from genre.model_export.zoo import build_baselines

GENRE = "genre"
#: The serving scorer's blend over its candidate sources, without the learned ranker.
BLEND = "blend"
#: The score of an item outside a candidate set: below any real score, and finite so
#: the ranking metrics do not take it for an excluded (already seen) item.
NOT_A_CANDIDATE = -1e30
#: The graph source the ablation adds to a plan without one (``graph_plans``): the
#: ``ann`` source's weight and limit.
GRAPH_ABLATION = SourceSpec("graph", 0.5, 100, {})
REPORTED = ("hr@10", "ndcg@10", "mrr", "coverage@10", "ild@10", "novelty@10", "gini@10")


def make_progress(console: Console | None = None) -> Progress:
    """The progress display every long step of training and evaluation uses."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )


class GenreModel(Baseline):
    """The GENRE ranker behind the evaluation's common interface."""

    name = GENRE

    def __init__(self, train: RankerTrainSettings, spec: FeatureSpec) -> None:
        super().__init__()
        self.train_cfg = train
        self.spec = spec
        self.sampler: TrainingSampler | None = None
        self.result: TrainResult | None = None
        self.inputs: RankerInputs | None = None

    def start(self, data: Interactions) -> TrainingSampler:
        """A sampler for the replay to feed with training clicks."""
        self.sampler = TrainingSampler(data.n_items, self.train_cfg.negatives, self.train_cfg.seed)
        return self.sampler

    def load(self, result: TrainResult, text_vectors: np.ndarray) -> None:
        """Use an already trained ranker (a checkpoint): ``fit`` then keeps it."""
        self.result = result
        self.inputs = RankerInputs(text_vectors, result.id_of_item)
        self.history = result.history
        self.params = {"best_epoch": result.best_epoch, "from": "checkpoint"}

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        if self.result is not None:
            return  # loaded from a checkpoint: no training
        if self.sampler is None:
            raise RuntimeError("GenreModel.start() must run before the replay pass")
        train_set = self.sampler.build()
        self.sampler = None  # free the samples once stacked
        self.result = train_ranker(
            data, text_vectors, train_set, valid, self.spec, self.train_cfg, progress
        )
        self.inputs = RankerInputs(text_vectors, self.result.id_of_item)
        self.history = self.result.history
        self.params = {
            "best_epoch": self.result.best_epoch,
            "train_clicks": len(train_set),
            "negatives": self.train_cfg.negatives,
            "dim": self.train_cfg.dim,
        }

    def score(self, batch: QueryBatch) -> np.ndarray:
        if self.result is None or self.inputs is None:
            raise RuntimeError("GenreModel.fit() must run before score()")
        return score_queries(self.result.model, self.inputs, batch, self.train_cfg.eval_batch)


@dataclass
class EvalReport:
    """Everything one ``genre evaluate`` run measured."""

    dataset: str
    split: dict[str, int]
    models: dict[str, dict[str, float]]
    params: dict[str, dict[str, Any]]
    fit_seconds: dict[str, float]
    seconds: float
    seed: int
    genre: GenreModel | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The fitted baselines by name (``genre train --model graph`` keeps LightGCN's).
    baselines: dict[str, Baseline] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI prints last: {"models": {name: {"hr@10", "ndcg@10", "mrr", ...}}}."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "seed": self.seed,
            "models": self.models,
            "params": self.params,
            "fit_seconds": self.fit_seconds,
            "seconds": round(self.seconds, 1),
            **self.extra,
        }


def evaluate_models(
    data: Interactions,
    text_vectors: np.ndarray,
    *,
    dataset: str,
    spec: FeatureSpec | None = None,
    train: RankerTrainSettings | None = None,
    baselines: list[str] | None = None,
    baseline_overrides: dict[str, dict[str, Any]] | None = None,
    include_genre: bool = True,
    valid_stride: int = 3,
    chunk: int = 256,
    console: Console | None = None,
    profiles: ProfileTrack | None = None,
    plan: CandidatePlan | None = None,
    genre_model: GenreModel | None = None,
    diversity: Sequence[DiversityRule] = (),
) -> EvalReport:
    """Fit every model on the same split and measure them on the same test clicks.

    ``profiles``: LLM user profiles along the log; GENRE then gets the profile feature.
    ``plan``: the serving scorer's candidate sources and pre-ranking; the report then
    adds the blend itself (``blend``), GENRE re-ranking only the blend's best
    ``rank_candidates`` (``genre@blend<N>``, what the worker serves) and the share of
    test clicks whose item the candidates hold (``extra["candidate_recall"]``). With
    the graph model evaluated (``lightgcn``), the same two rows again for the plan
    with the ``graph`` source added, or removed if the plan has it (``graph_plans``).
    ``genre_model``: a GENRE ranker already trained (``GenreModel.load``), kept as is.
    ``diversity``: rules the scorer's diversity step applies to GENRE's scores, each
    reported as its own row (``diversity_name``): the accuracy/diversity frontier.
    """
    spec = spec or FeatureSpec()
    if profiles is not None and PROFILE_FEATURE not in spec.feature_names:
        spec = replace(spec, feature_names=(*spec.feature_names, PROFILE_FEATURE))
    train = train or RankerTrainSettings()
    start = time.perf_counter()
    models: list[Baseline] = build_baselines(baselines, **(baseline_overrides or {}))
    if plan is not None and plan.uses_graph and not any(isinstance(m, LightGCN) for m in models):
        models.append(LightGCN())  # the graph source serves its embeddings
    genre = (genre_model or GenreModel(train, spec)) if include_genre else None
    if genre is not None:
        models.insert(0, genre)
    if not models:
        raise ValueError("no models to evaluate; pass baselines or keep the GENRE ranker")
    split = {
        name: int((data.split == s).sum())
        for s, name in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test"))
    }
    if min(split.values()) == 0:
        raise ValueError(f"every split needs clicks, got {split}; use a longer click log")
    end_valid = int(data.indices(VALID)[-1]) + 1
    with make_progress(console) as progress:
        trains = genre if genre is not None and genre.result is None else None
        to_fit = [m for m in models if m is not genre or trains is not None]
        fit_seconds: dict[str, float] = {m.name: 0.0 for m in models}
        if to_fit:  # a loaded GENRE alone needs no train + valid replay
            valid = _replay_train_valid(
                data, text_vectors, spec, trains, end_valid, valid_stride, progress, profiles
            )
            for model in to_fit:
                t0 = time.perf_counter()
                model.fit(data, valid, text_vectors, seed=train.seed, progress=progress)
                fit_seconds[model.name] = round(time.perf_counter() - t0, 1)
            del valid
        plans = graph_plans(plan, models, data) if plan is not None else {}
        tested = _replay_test(
            data, text_vectors, spec, models, chunk, progress, profiles, plans, diversity
        )
    extra: dict[str, Any] = {"segments": tested.segments}
    if tested.recall:
        extra["candidate_recall"] = tested.recall
    return EvalReport(
        dataset=dataset,
        split=split,
        models=tested.models,
        params={m.name: m.params for m in models},
        fit_seconds=fit_seconds,
        seconds=time.perf_counter() - start,
        seed=train.seed,
        genre=genre,
        extra=extra,
        baselines={m.name: m for m in models if m is not genre},
    )


def _replay_train_valid(
    data: Interactions,
    text_vectors: np.ndarray,
    spec: FeatureSpec,
    genre: GenreModel | None,
    end_valid: int,
    stride: int,
    progress: Progress,
    profiles: ProfileTrack | None,
) -> QueryBatch:
    replay = StreamReplay(data, spec, text_vectors, profiles)
    sampler = genre.start(data) if genre is not None else None
    valid: list[QueryBatch] = []
    task = progress.add_task("replaying train + valid clicks", total=end_valid)
    n_valid = 0
    for e in replay.run(end_valid):
        if not data.is_query(e):
            pass  # a re-click or a re-send: folded into the state, never predicted
        elif data.split[e] == TRAIN:
            if sampler is not None:
                sampler.observe(replay, e)
        else:
            if n_valid % stride == 0:
                valid.append(snapshot(replay, [e]))
            n_valid += 1
        if e % 1000 == 0:
            progress.update(task, completed=e)
    progress.update(task, completed=end_valid)
    return stack_queries(valid)


@dataclass
class TestFigures:
    """What the test replay measured: per model, overall and per segment
    (``metrics.SEGMENTS``), and the candidates' recall with a ``CandidatePlan``."""

    models: dict[str, dict[str, float]]
    segments: dict[str, dict[str, dict[str, float]]]
    recall: dict[str, float]


def graph_plans(
    plan: CandidatePlan, models: Sequence[Baseline], data: Interactions
) -> dict[str, CandidatePlan]:
    """The plans the test replay gathers candidates with, by report suffix: the plan as
    configured (``""``) and, when a fitted LightGCN is among ``models``, its graph
    ablation: ``"-graph"`` without the configured ``graph`` source, else ``"+graph"``
    with one at ``GRAPH_ABLATION`` weight and limit. Each gets the model's embeddings."""
    lightgcn = next((m for m in models if isinstance(m, LightGCN)), None)
    if lightgcn is None:
        return {"": plan}
    embeddings = GraphEmbeddings.of(
        [data.item_ids[i] for i in np.flatnonzero(lightgcn.trained_items())],
        lightgcn.item_embeddings()[lightgcn.trained_items()],
    )
    plan = replace(plan, graph=embeddings)
    if plan.uses_graph:
        kept = tuple(s for s in plan.sources if s.name != "graph")
        return {"": plan, "-graph": replace(plan, sources=kept)}
    return {"": plan, "+graph": replace(plan, sources=(*plan.sources, GRAPH_ABLATION))}


def _replay_test(
    data: Interactions,
    text_vectors: np.ndarray,
    spec: FeatureSpec,
    models: list[Baseline],
    chunk: int,
    progress: Progress,
    profiles: ProfileTrack | None,
    plans: dict[str, CandidatePlan] | None = None,
    diversity: Sequence[DiversityRule] = (),
) -> TestFigures:
    replay = StreamReplay(data, spec, text_vectors, profiles)
    train_counts = np.bincount(data.items[data.split == TRAIN], minlength=data.n_items)

    def new_metrics() -> RankingMetrics:
        return RankingMetrics(data.n_items, vectors=text_vectors, train_counts=train_counts)

    metrics = {m.name: new_metrics() for m in models}
    plans = plans or {}
    plan = plans.get("")
    served = f"{GENRE}@blend{plan.rank_candidates}" if plan is not None else ""
    for suffix in plans:
        metrics[BLEND + suffix] = new_metrics()
        if GENRE in metrics:
            metrics[served + suffix] = new_metrics()
    rules = list(diversity) if GENRE in metrics else []
    for rule in rules:
        metrics[diversity_name(rule)] = new_metrics()
    hits = {"union": 0, "prerank": 0, "queries": 0}
    buffer: list[QueryBatch] = []
    #: Per extra plan: the blend and pre-ranking of each buffered query.
    others: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in plans if s}

    def flush() -> None:
        batch = stack_queries(buffer)
        buffer.clear()
        variants: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if batch.blend is not None and batch.prerank is not None:
            variants[""] = (batch.blend, batch.prerank)
        for suffix, pending in others.items():
            variants[suffix] = (
                np.stack([b for b, _ in pending]),
                np.stack([p for _, p in pending]),
            )
            pending.clear()
        for model in models:
            scores = model.score(batch)
            metrics[model.name].add(scores, batch)
            if model.name == GENRE:
                for suffix, (_, prerank) in variants.items():
                    masked = np.where(prerank, scores, NOT_A_CANDIDATE)
                    metrics[served + suffix].add(masked, batch)
                popularity = trending_of(batch, spec)
                for rule in rules:
                    reranked = rerank_scores(scores, batch, rule, text_vectors, popularity)
                    metrics[diversity_name(rule)].add(reranked, batch)
        for suffix, (blend, _) in variants.items():
            metrics[BLEND + suffix].add(np.where(np.isnan(blend), NOT_A_CANDIDATE, blend), batch)
        if batch.blend is not None and batch.prerank is not None:
            rows = np.arange(len(batch))
            hits["union"] += int((~np.isnan(batch.blend[rows, batch.targets])).sum())
            hits["prerank"] += int(batch.prerank[rows, batch.targets].sum())
            hits["queries"] += len(batch)

    task = progress.add_task("replaying and ranking test clicks", total=len(data))
    for e in replay.run():
        if data.split[e] == TEST and data.is_query(e):
            buffer.append(snapshot(replay, [e], plan))
            for suffix, pending in others.items():
                user, now = int(data.users[e]), float(data.ts[e])
                pending.append(replay.prerank(user, now, plans[suffix]))
            if len(buffer) >= chunk:
                flush()
        if e % 1000 == 0:
            progress.update(task, completed=e)
    if buffer:
        flush()
    progress.update(task, completed=len(data))
    recall = {}
    if hits["queries"]:
        n = hits["queries"]
        recall = {
            "candidates": round(hits["union"] / n, 4),
            f"blend_top{plan.rank_candidates if plan else 0}": round(hits["prerank"] / n, 4),
        }
    return TestFigures(
        models={name: m.result() for name, m in metrics.items()},
        segments={name: m.by_segment(data) for name, m in metrics.items()},
        recall=recall,
    )


def diversity_name(rule: DiversityRule) -> str:
    """The report row of GENRE re-ranked by ``rule``."""
    return f"{GENRE}+mmr(lambda={rule.mmr_lambda:g},pop={rule.popularity_weight:g})"


def trending_of(batch: QueryBatch, spec: FeatureSpec) -> np.ndarray:
    """Float [B, n_items]: each item's decayed trending count, the popularity the
    scorer's exposure control reads (``trending_scores``)."""
    if "trending" in spec.feature_names:
        return batch.features[..., spec.feature_names.index("trending")]
    return batch.popularity[spec.trending_half_life_s]


def rerank_scores(
    scores: np.ndarray,
    batch: QueryBatch,
    rule: DiversityRule,
    vectors: np.ndarray,
    popularity: np.ndarray,
    k: int = K,
) -> np.ndarray:
    """``scores`` with each query's best ``rule.candidates`` unseen items re-ordered by the
    scorer's diversity step (``core.features.diversity.diversify``), lifted above the rest
    so the ranking metrics see the re-ranked list."""
    best = top_k(scores, batch, rule.candidates)  # [B, N], in score order
    rows = np.arange(len(batch))[:, None]
    cand = np.take_along_axis(np.where(batch.exclude, -np.inf, scores), best, axis=1)
    order = diversify(cand, vectors[best], rule, k, popularity[rows, best])
    out = np.array(scores, np.float64)
    finite = out[np.isfinite(out)]
    lift = (finite.max() if finite.size else 0.0) + 1.0
    n = best.shape[1]
    out[rows, np.take_along_axis(best, order, axis=1)] = lift + (n - np.arange(n))
    return out


def results_table(report: EvalReport) -> Table:
    """The results as a rich table, best NDCG@10 first."""
    table = Table(title=f"{report.dataset}: temporal split {report.split}, full ranking")
    table.add_column("model")
    for key in REPORTED:
        table.add_column(key, justify="right")
    for name, row in sorted(report.models.items(), key=lambda kv: -kv[1]["ndcg@10"]):
        table.add_row(name, *(f"{row[k]:.4f}" if k in row else "-" for k in REPORTED))
    return table


def segments_table(report: EvalReport) -> Table | None:
    """NDCG@10 of every model per segment (``metrics.SEGMENTS``), best overall first."""
    segments: dict[str, dict[str, dict[str, float]]] = report.extra.get("segments", {})
    if not segments:
        return None
    names = list(SEGMENTS)
    first = next(iter(segments.values()))
    table = Table(title="NDCG@10 by segment (queries)")
    table.add_column("model")
    for name in names:
        table.add_column(f"{name} ({first[name]['queries']})", justify="right")
    for model, _ in sorted(report.models.items(), key=lambda kv: -kv[1]["ndcg@10"]):
        if model in segments:
            row = segments[model]
            table.add_row(model, *(_ndcg_cell(row[n]) for n in names))
    return table


def _ndcg_cell(figures: dict[str, float]) -> str:
    return f"{figures['ndcg@10']:.4f}" if "ndcg@10" in figures else "-"


def write_report(report: EvalReport, out_dir: Path) -> tuple[Path, Path]:
    """Save the table as markdown and a bar chart PNG; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = sorted(report.models.items(), key=lambda kv: -kv[1]["ndcg@10"])
    lines = [
        f"# {report.dataset}: GENRE ranker vs baselines",
        "",
        f"Temporal split {report.split} (train/valid/test clicks), seed {report.seed}; "
        "each test click ranked against every item its user had not interacted with.",
        "",
        "| model | " + " | ".join(REPORTED) + " | fit s |",
        "|---|" + "---:|" * (len(REPORTED) + 1),
    ]
    for name, row in ranked:
        cells = " | ".join(f"{row[k]:.4f}" if k in row else "-" for k in REPORTED)
        lines.append(f"| {name} | {cells} | {report.fit_seconds.get(name, 0):.1f} |")
    segments: dict[str, dict[str, dict[str, float]]] = report.extra.get("segments", {})
    if segments:
        first = next(iter(segments.values()))
        lines += [
            "",
            "NDCG@10 by segment (queries in brackets; `metrics.SEGMENTS`):",
            "",
            "| model | " + " | ".join(f"{n} ({first[n]['queries']})" for n in SEGMENTS) + " |",
            "|---|" + "---:|" * len(SEGMENTS),
        ]
        for name, _ in ranked:
            if name in segments:
                cells = " | ".join(_ndcg_cell(segments[name][n]) for n in SEGMENTS)
                lines.append(f"| {name} | {cells} |")
    lines += ["", "Chosen parameters:", ""]
    lines += [f"- {name}: {report.params.get(name, {})}" for name, _ in ranked]
    md = out_dir / "evaluation.md"
    md.write_text("\n".join(lines) + "\n")

    names = [n for n, _ in ranked]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, [r["hr@10"] for _, r in ranked], 0.4, label="HR@10")
    ax.bar(x + 0.2, [r["ndcg@10"] for _, r in ranked], 0.4, label="NDCG@10")
    ax.set_xticks(x, names, rotation=20)
    ax.set_title(f"{report.dataset}, temporal split, full ranking")
    ax.legend()
    fig.tight_layout()
    png = out_dir / "evaluation.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return md, png
