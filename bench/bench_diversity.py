"""What the scorer's diversity step (``scorer.diversity``) costs per list.

Two measurements, in one process:

* the rule alone (``core.features.diversity.diversify``): greedy MMR picking 10 of
  ``N`` candidates with 384-d vectors and the popularity penalty, for one list and
  for a batch of 64 lists at once (the scorer re-ranks a whole batch in one call);
* the whole scorer (``ScorerWorker.score``, blend over every source, as
  ``bench_scorer.py`` builds it: in-memory views, ``--items`` random unit vectors,
  ``--users`` users with history 50) with the step off and on, in ms per user.

    python bench/bench_diversity.py

Prints one JSON line and writes ``bench/results/diversity.json``.
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
from bench_scorer import _build, _config, _time_calls
from machine import cpu_name, memory_mb, save_result
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from genre.core.config import load_config
from genre.core.features.diversity import DiversityRule, diversify

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "diversity.json"


def time_rule(n: int, batch: int, dim: int, seconds: float, seed: int = 0) -> dict[str, float]:
    """Median ms per list of ``diversify`` over ``batch`` lists of ``n`` candidates."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(batch, n))
    vectors = rng.standard_normal((batch, n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    popularity = rng.exponential(10.0, size=(batch, n))
    rule = DiversityRule(0.8, 0.2, n)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t0 = time.perf_counter()
        diversify(scores, vectors, rule, 10, popularity)
        times.append(time.perf_counter() - t0)
    ms = float(np.median(times)) * 1000.0
    return {
        "candidates": n,
        "batch": batch,
        "ms_per_call": round(ms, 4),
        "ms_per_list": round(ms / batch, 4),
    }


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from genre.workers.scorer import ScorerWorker

    base = load_config(args.config) if args.config else load_config(None)
    rule_rows = [
        time_rule(n, b, base.encoder.dim, args.seconds) for n in args.candidates for b in (1, 64)
    ]
    for r in rule_rows:
        console.print(
            f"rule: N={r['candidates']} batch {r['batch']}: {r['ms_per_list']:.3f} ms/list"
        )
    work = Path(tempfile.mkdtemp(prefix="genre-bench-diversity-"))
    rows: list[dict[str, Any]] = []
    try:
        cfg = _config(base, work, args.history)
        views, contexts = _build(cfg, args.users, args.items, args.history, args.seed)
        cases: list[tuple[str, dict[str, Any]]] = [("off", {"enabled": False})]
        cases += [
            (
                f"on N={n}",
                {"enabled": True, "mmr_lambda": 0.8, "popularity_weight": 0.2, "candidates": n},
            )
            for n in args.candidates
        ]
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
        )
        with progress:
            task = progress.add_task("scorer", total=len(cases) * len(args.batches))
            for name, diversity in cases:
                data = cfg.model_dump()
                data["scorer"]["diversity"] = diversity
                worker = ScorerWorker(type(cfg).model_validate(data), views, "bench")
                for batch in args.batches:
                    progress.update(task, description=f"scorer, diversity {name}, batch {batch}")
                    row = _time_calls(worker, contexts, batch, args.seconds)
                    rows.append({"diversity": name, "batch": batch, **row})
                    progress.advance(task)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        console.print(
            f"scorer {r['diversity']:<8} batch {r['batch']:>3}: {r['ms_per_user']:.3f} ms/user"
        )
    return {
        "bench": "diversity",
        "machine": f"{os.cpu_count()} cores ({cpu_name()})",
        "users": args.users,
        "items": args.items,
        "history": args.history,
        "dim": base.encoder.dim,
        "rule": rule_rows,
        "scorer_blend": rows,
        "peak_rss_mb": round(memory_mb()[1], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=50)
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
