"""Scorer time against history length (10 to 200 clicks) and batch size, in one process.

What it measures: ``ScorerWorker.handle`` (user state read from the table,
every configured candidate source, the blend or the learned ranker, explanations)
for a batch of users whose state holds ``L`` clicks, for L in ``--histories``.
Publishing is left out (there is no broker here: ``_publish`` is replaced by a
no-op; ``bench_scale.py`` measures the whole path end to end).

* ``blend``: the blend scorer over the sources' candidates (no model);
* ``ranker``: the learned ranker (ONNX Runtime, CPU provider) re-ranking the
  union of candidates. For each L a ranker of ``RankerConfig(history_len=L)``
  with random weights is exported to ONNX in a temporary folder: its attention
  covers all L clicks (the served ranker covers its training history, 50 by
  default). Timing does not depend on the weights.

The worker's objects are GENRE's own (``build_streams``: Faust tables in memory,
the exact item index, the item catalogue over Qdrant local mode) with
``--items`` items of random unit vectors, ``--users`` users whose histories are
folded through the user-state rules, and the co-click graph built from those
histories by the graph rules, all in-process without starting the Faust app.

    python bench/bench_scorer.py                          # L = 10, 25, 50, 100, 200
    python bench/bench_scorer.py --histories 10 50 --batches 64   # a quick look

Prints one JSON line and writes ``bench/results/scorer.json``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from genre.schemas import ClickEvent, ScoreRequest

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


def _build(cfg: GenreConfig, users: int, items: int, history: int, seed: int) -> Any:
    """GENRE's streams objects filled with items, user states and the co-click graph."""
    from genre.core.vectorstore import open_vector_store
    from genre.streams.agents import graph_rules, user_rules
    from genre.streams.app import build_streams
    from genre.streams.state import finish_user_state, new_item_state, new_user_state

    rng = np.random.default_rng(seed)
    ids = [f"i{n}" for n in range(items)]
    vectors = rng.standard_normal((items, cfg.encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = open_vector_store(cfg)
    store.ensure_collection(cfg.qdrant.items_collection, cfg.encoder.dim)
    store.ensure_collection(cfg.qdrant.users_collection, cfg.encoder.dim)
    streams = build_streams(cfg, store=store)
    streams.index = ExactIndex(cfg.encoder.dim)
    streams.index.upsert(ids, vectors)
    for key, vec in zip(ids, vectors, strict=True):
        streams.catalog.put(key, vec, {"title": f"item {key}", "category": "c", "id": key})
    rules, grules = user_rules(streams), graph_rules(streams)
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1  # Zipf-popular clicks
    popularity /= popularity.sum()
    ts = 1_700_000_000.0
    graph: dict[str, dict] = {}
    for u in range(users):
        state = new_user_state()
        for n, item in enumerate(rng.choice(items, size=history, p=popularity).tolist()):
            ts += 1.0
            ev = ClickEvent.model_construct(
                event_id=f"u{u}-e{n}", user_id=f"u{u}", item_id=ids[item], type="click", ts=ts
            )
            neighbours = rules.apply(state, ev, vectors[item], vector_as_array=True)
            g = graph.setdefault(ids[item], new_item_state())
            grules.add_click(g, ts)
            grules.add_neighbours(g, neighbours, ts)
            for nbr in neighbours:
                grules.add_neighbours(graph.setdefault(nbr, new_item_state()), [ids[item]], ts)
        streams.users.data[f"u{u}"] = finish_user_state(state)
    for key, g in graph.items():
        streams.graph.data[key] = g
    streams.observe_event_time(ts)
    return streams


def _time_calls(worker: Any, requests: list[ScoreRequest], batch: int, seconds: float) -> dict:
    async def one(part: list[ScoreRequest]) -> float:
        t0 = time.perf_counter()
        await worker.handle(part)
        return time.perf_counter() - t0

    async def run() -> list[float]:
        lat: list[float] = []
        start = time.perf_counter()
        i = 0
        await one(requests[:batch])  # warm-up (ONNX Runtime allocations, caches)
        while time.perf_counter() - start < seconds or len(lat) < 5:
            part = requests[i : i + batch] or requests[:batch]
            i = (i + batch) % max(len(requests) - batch, 1)
            lat.append(await one(part))
        return lat

    ms = np.array(asyncio.run(run())) * 1000.0
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
    from genre.model_export.ranker import RankerConfig

    ckpt, _ = build_checkpoint(None, out.parent, RankerConfig(history_len=history))
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
                streams = _build(cfg, args.users, args.items, history, args.seed)
                tune_gc()  # as a worker does once it is built
                requests = [
                    ScoreRequest(
                        user_id=f"u{u}",
                        trigger_event_id=f"u{u}-e{history - 1}",
                        trigger_produced_at=time.time(),
                        trigger_ts=streams.event_now(),
                    )
                    for u in range(args.users)
                ]
                progress.update(task, description=f"history {history}: ranker export")
                with console.capture():
                    model_dir = _export_ranker(history, work / "ranker", console)
                handle = RankerHandle(model_dir, "fp32", "auto", 1, required=True)
                for mode, ranker in (("blend", None), ("ranker", handle)):
                    worker = ScorerWorker(streams, "bench", ranker)

                    async def no_publish(batch: Any, recs: Any) -> None:
                        return None

                    worker._publish = no_publish  # type: ignore[method-assign]
                    for batch in args.batches:
                        progress.update(task, description=f"history {history}: {mode} x{batch}")
                        row = _time_calls(worker, requests, batch, args.seconds)
                        rows.append({"history": history, "mode": mode, "batch": batch, **row})
                        console.print(
                            f"history {history:>3} {mode:<6} batch {batch:>3}: "
                            f"p50 {row['p50_ms']:.1f} ms, {row['ms_per_user']:.2f} ms/user"
                        )
                streams.store.close()
            finally:
                shutil.rmtree(work, ignore_errors=True)
            progress.advance(task)
    return {
        "bench": "scorer",
        "machine": f"{os.cpu_count()} cores ({cpu_name()}), ONNX Runtime CPU provider, 1 thread",
        "users": args.users,
        "items": args.items,
        "sources": [c.name for c in base.scorer.candidates],
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
