"""Scorer time against history length (10 to 200 clicks) and batch size, in one process.

What it measures: ``ScorerWorker.prepare`` and ``ScorerWorker.score`` (every
configured candidate source, the blend or the learned ranker, explanations, the
list records) for a batch of users whose state holds ``L`` clicks, for L in
``--histories``: the work the scorer thread does per batch. The fold's hand-over
(``ScoreContext``s built from the users' states, as the fold makes them) is done
once up front; publishing is left out (there is no broker here;
``bench_scale.py`` measures the whole path end to end).

* ``blend``: the blend scorer over the sources' candidates (no model);
* ``ranker``: the learned ranker (ONNX Runtime, CPU provider) re-ranking the
  best ``ranker.rank_candidates`` of the blend. For each L a ranker of
  ``RankerShape(history_len=L)`` with random weights is exported to ONNX in a
  temporary folder: its attention covers all L clicks (the served ranker covers
  its training history, 50 by default). Timing does not depend on the weights.

The scorer reads the worker through ``ScorerViews``; here they are the in-memory
ones (``streams/views.py``: the item graph in a dict, the item catalogue, the
exact item index, a fixed event clock) with ``--items`` items of random unit
vectors, ``--users`` users whose histories are folded through the stream's
user-state rules (``core.features``), and the co-click graph built from those
clicks' evidence by the graph rules (``apply_evidence``), as the graph agent does.

    python bench/bench_scorer.py                          # L = 10, 25, 50, 100, 200
    python bench/bench_scorer.py --histories 10 50 --batches 64   # a quick look

Prints one JSON line and writes ``bench/results/scorer.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_ranker import build_checkpoint
from machine import cpu_name, memory_mb, save_result
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from genre.core.config import GenreConfig, load_config
from genre.core.exact_index import ExactIndex
from genre.core.features import FeatureSpec, UserState, apply_evidence, click_evidence
from genre.streams.score_context import ScoreContext, context_of
from genre.streams.views import (
    CatalogSearch,
    FixedClock,
    MemoryGraph,
    MemoryProfiles,
    ScorerViews,
    memory_items,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "scorer.json"


def _config(base: GenreConfig, work: Path, history: int) -> GenreConfig:
    data = base.model_dump(mode="json")
    data["data_dir"] = str(work)
    data["qdrant"]["path"] = "qdrant"
    data["qdrant"]["api_key"] = None
    data["llm"]["api_key"] = None
    data["kafka"]["security"] = {}
    data["streams"]["history_size"] = history
    data["encoder"]["dir"] = str(base.path(base.encoder.dir))
    path = work / "genre.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path, environ={})


def _build(
    cfg: GenreConfig, users: int, items: int, history: int, seed: int
) -> tuple[ScorerViews, list[ScoreContext]]:
    """The scorer's views filled with items and the co-click graph, and one context per
    user (the user's state after their ``history`` clicks, as the fold hands it over)."""
    spec = FeatureSpec.from_streams(cfg.streams)
    rules, grules = spec.user_rules(), spec.graph_rules()
    rng = np.random.default_rng(seed)
    ids = [f"i{n}" for n in range(items)]
    vectors = rng.standard_normal((items, cfg.encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ExactIndex(cfg.encoder.dim)
    index.upsert(ids, vectors)
    catalog = memory_items(ids, vectors, [{"title": f"item {k}", "category": "c"} for k in ids])
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1  # Zipf-popular clicks
    popularity /= popularity.sum()
    ts = 1_700_000_000.0
    evidence = []
    contexts = []
    for u in range(users):
        state = UserState()
        for n, item in enumerate(rng.choice(items, size=history, p=popularity).tolist()):
            ts += 1.0
            neighbours = rules.apply(
                state,
                item_id=ids[item],
                event_id=f"u{u}-e{n}",
                kind="click",
                ts=ts,
                item_vector=vectors[item],
            )
            evidence.extend(click_evidence(ids[item], neighbours, ts))
        contexts.append(
            context_of(
                state,
                user_id=f"u{u}",
                event_id=f"u{u}-e{history - 1}",
                produced_at=time.time(),
                ts=ts,
                clicked_items=[state.history[-1]],
                taken_at=time.time(),
                folded_at=time.time(),
            )
        )
    graph = MemoryGraph()
    graph.update(apply_evidence(grules, evidence, graph.get))
    views = ScorerViews(
        graph=graph,
        items=catalog,
        search=CatalogSearch(index),
        profiles=MemoryProfiles(),
        clock=FixedClock(ts),
    )
    return views, contexts


def _time_calls(worker: Any, contexts: list[ScoreContext], batch: int, seconds: float) -> dict:
    def one(part: list[ScoreContext]) -> float:
        t0 = time.perf_counter()
        worker.prepare()  # on the event loop in a worker, before each batch
        lists = worker.score(part)
        elapsed = time.perf_counter() - t0
        assert len(lists) == len(part)
        return elapsed

    lat: list[float] = []
    one(contexts[:batch])  # warm-up (ONNX Runtime allocations, caches)
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or len(lat) < 5:
        part = contexts[i : i + batch] or contexts[:batch]
        i = (i + batch) % max(len(contexts) - batch, 1)
        lat.append(one(part))
    ms = np.array(lat) * 1000.0
    return {
        "calls": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "ms_per_user": round(float(np.median(ms)) / batch, 3),
        "users_per_s": round(batch * 1000.0 / float(np.median(ms)), 1),
    }


def _export_ranker(history: int, out: Path, console: Console) -> Path:
    """A random-weight ranker whose attention covers ``history`` clicks, exported to ``out``."""
    from genre.export import export_ranker
    from genre.model_export.ranker import RankerShape

    ckpt, _ = build_checkpoint(None, out.parent, RankerShape(history_len=history))
    export_ranker(ckpt, out, precisions=("fp32",), console=console)
    return out


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from genre.workers.ranker import RankerHandle
    from genre.workers.scorer import ScorerWorker
    from genre.workers.service import tune_gc

    base = load_config(args.config) if args.config else load_config(None)
    rows: list[dict[str, Any]] = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    )
    with progress:
        task = progress.add_task("history lengths", total=len(args.histories))
        for history in args.histories:
            work = Path(tempfile.mkdtemp(prefix=f"genre-bench-scorer-{history}-"))
            try:
                progress.update(task, description=f"history {history}: users and graph")
                cfg = _config(base, work, history)
                views, contexts = _build(cfg, args.users, args.items, history, args.seed)
                tune_gc()  # as a worker does once it is built
                progress.update(task, description=f"history {history}: ranker export")
                with console.capture():
                    model_dir = _export_ranker(history, work / "ranker", console)
                handle = RankerHandle(model_dir, "fp32", "auto", 1, required=True)
                for mode, ranker in (("blend", None), ("ranker", handle)):
                    worker = ScorerWorker(cfg, views, "bench", ranker)
                    for batch in args.batches:
                        progress.update(task, description=f"history {history}: {mode} x{batch}")
                        row = _time_calls(worker, contexts, batch, args.seconds)
                        rows.append({"history": history, "mode": mode, "batch": batch, **row})
                        console.print(
                            f"history {history:>3} {mode:<6} batch {batch:>3}: "
                            f"p50 {row['p50_ms']:.1f} ms, {row['ms_per_user']:.2f} ms/user"
                        )
            finally:
                shutil.rmtree(work, ignore_errors=True)
            progress.advance(task)
    return {
        "bench": "scorer",
        "machine": f"{os.cpu_count()} cores ({cpu_name()}), ONNX Runtime CPU provider, 1 thread",
        "users": args.users,
        "items": args.items,
        "sources": [c.name for c in base.scorer.candidates],
        "rank_candidates": base.ranker.rank_candidates,
        "rows": rows,
        "summary": {
            f"{r['mode']}_batch{r['batch']}": {
                str(x["history"]): x["ms_per_user"]
                for x in rows
                if x["mode"] == r["mode"] and x["batch"] == r["batch"]
            }
            for r in rows
        },
        "summary_unit": "median ms per user scored, by history length",
        "peak_rss_mb": round(memory_mb()[1], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    result = measure(args, console)
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
