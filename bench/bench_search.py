"""Vector search as the catalogue grows: qdrant-client local mode, Qdrant Edge, ExactIndex.

Usage: python bench/bench_search.py [--sizes 10000,100000,1000000] [--rounds 3]

Items are seeded random 384-d float32 unit vectors drawn around 1000 gaussian
centres (so the top 10 of a query is a real neighbourhood, not noise); queries
come from the same mixture. Backends, each in its own subprocess so that its
resident memory is its own:

* ``local``: QdrantStore on qdrant-client local mode (the project default);
* ``edge``: EdgeStore on qdrant-edge-py as written (plain segments: exact search in Rust);
* ``edge_hnsw``: the same after ``optimize()`` has built Qdrant's HNSW index;
* ``exact``: core/exact_index.py ExactIndex (what the scorer searches in local mode).

For each size the backends are built one after the other, then measured in
interleaved rounds (round 1 of every backend, then round 2, ...) and the
median of the rounds is reported, so a noisy neighbour hits them alike.
Per round: single-query top-10 latency (p50, p99) and the per-query cost of
batches of 64. Recall@10 is against numpy's exact cosine top 10. Memory is
the backend process's resident set after the build minus before it (the
data set itself is loaded before the first reading). A step that the rates
measured at the smaller sizes project past ``--max-step-s`` is skipped, and
its row holds that projection, labelled as such.

Prints one JSON line and writes bench/results/search.json (and search.png
when matplotlib is importable). ``--earlier old.json`` keeps the measured rows
of an earlier run beside the new one (``--replot`` adds them without measuring).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_name, memory_mb

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results"
BACKENDS = ("local", "edge", "edge_hnsw", "exact")
COLLECTION = "items"
TOP_K = 10


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_vectors(n: int, dim: int, centres: int, seed: int, stream: int) -> np.ndarray:
    """``n`` unit vectors around ``centres`` gaussian centres (same centres for every stream)."""
    centre_rng = np.random.default_rng(seed)
    c = centre_rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        which = rng.integers(0, centres, stop - start)
        # Noise of norm ~1, as large as the centre: items of a cluster sit at cosine ~0.5.
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) / np.sqrt(dim)
        block = c[which] + noise
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k best items per query by cosine (all rows are unit vectors)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(data), 200_000):
        s = queries @ data[start : start + 200_000].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        best_i = np.concatenate([best_i, part + start], 1)
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(best_s, order, 1)
        best_i = np.take_along_axis(best_i, order, 1)
    return best_i


# ---------------------------------------------------------------------------
# Worker: one backend at one size, in its own process
# ---------------------------------------------------------------------------


class _Exact:
    def __init__(self, dim: int) -> None:
        from genre.core.exact_index import ExactIndex

        self.index = ExactIndex(dim)

    def upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        self.index.upsert(ids, vectors)

    def search(self, queries: np.ndarray) -> list[list[str]]:
        return [[h.id for h in hits] for hits in self.index.search_batch(queries, TOP_K)]


class _Store:
    def __init__(self, backend: str, folder: Path, dim: int) -> None:
        from genre.core.vectorstore import EdgeStore, QdrantStore

        if backend == "local":
            self.store: Any = QdrantStore(path=str(folder))
        else:
            self.store = EdgeStore(path=str(folder))
        self.store.ensure_collection(COLLECTION, dim)

    def upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        self.store.upsert(COLLECTION, ids, vectors, [{} for _ in ids])

    def search(self, queries: np.ndarray) -> list[list[str]]:
        found = self.store.search_batch(COLLECTION, queries, TOP_K)
        return [[h.id for h in hits] for hits in found]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker(args: argparse.Namespace) -> None:
    """Build one backend, then answer 'round' / 'quit' lines on stdin with JSON lines."""
    data = np.load(args.data)
    queries = np.load(args.queries)
    truth = np.load(args.truth)
    n, dim = data.shape
    ids = [f"i{i}" for i in range(n)]
    import genre.core.exact_index
    import genre.core.vectorstore  # noqa: F401  (imports stay out of the timings and memory)

    rss_before, _ = memory_mb()
    folder = Path(args.workdir)
    t_open = time.perf_counter()
    impl: Any = _Exact(dim) if args.backend == "exact" else _Store(args.backend, folder, dim)
    t0 = time.perf_counter()
    for start in range(0, n, args.ingest_batch):
        impl.upsert(ids[start : start + args.ingest_batch], data[start : start + args.ingest_batch])
    ingest_s = time.perf_counter() - t0
    build: dict[str, Any] = {
        "open_s": t0 - t_open,
        "ingest_s": ingest_s,
        "ingest_items_per_s": n / ingest_s,
    }
    if args.backend == "edge_hnsw":
        t1 = time.perf_counter()
        impl.store.optimize(COLLECTION)
        build["optimize_s"] = time.perf_counter() - t1
        shard = impl.store._open(COLLECTION)
        build["indexed_vectors"] = int(shard.info().indexed_vectors_count)
        build["segments"] = int(shard.info().segments_count)
    build["build_s"] = time.perf_counter() - t0
    build["build_items_per_s"] = n / build["build_s"]
    rss_after, hwm = memory_mb()
    build["rss_added_mb"] = rss_after - rss_before
    build["peak_rss_mb"] = hwm
    build["data_rss_mb"] = rss_before
    del data
    impl.search(queries[:4])  # warm-up
    _emit({"event": "ready", **build})

    single_q = queries[: args.single]
    batch_q = queries[: args.batch * args.batches]
    found: list[list[str]] = []
    for line in sys.stdin:
        if line.strip() != "round":
            break
        lat = []
        found = []
        for q in single_q:
            t = time.perf_counter()
            found.extend(impl.search(q[None, :]))
            lat.append(time.perf_counter() - t)
        per_query = []
        for start in range(0, len(batch_q), args.batch):
            chunk = batch_q[start : start + args.batch]
            t = time.perf_counter()
            impl.search(chunk)
            per_query.append((time.perf_counter() - t) / len(chunk))
        lat_ms = np.array(lat) * 1000
        _emit(
            {
                "event": "round",
                "single_p50_ms": float(np.percentile(lat_ms, 50)),
                "single_p99_ms": float(np.percentile(lat_ms, 99)),
                "batch_per_query_ms": float(np.median(per_query) * 1000),
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    hits = [
        len({int(i[1:]) for i in got} & set(want.tolist()))
        for got, want in zip(found, truth[: len(found)], strict=True)
    ]
    _emit({"event": "done", "recall_at_10": float(np.sum(hits) / (TOP_K * len(hits)))})


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


class Job:
    """A running worker process."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        out = self.read()
        self.proc.wait(timeout=120)
        return out


def _fit(
    sizes: list[int], values: list[float], lo: float = -math.inf, hi: float = math.inf
) -> tuple[float, float]:
    """(c, e) of value = c * n^e through the last two points, e clipped to [lo, hi].

    The curve always passes through the largest measured point.
    """
    if len(sizes) == 1:
        e = min(max(1.0, lo), hi)
    else:
        (n1, n2), (v1, v2) = sizes[-2:], values[-2:]
        e = math.log(v2 / v1) / math.log(n2 / n1) if v1 > 0 and v2 > 0 else 1.0
        e = min(max(e, lo), hi)
    return values[-1] / sizes[-1] ** e, e


def project(history: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Figures at size n projected from the measured smaller sizes; labelled as projections."""
    sizes = [h["n"] for h in history]
    out: dict[str, Any] = {"label": "EXTRAPOLATED from the measured sizes, not measured"}
    # Building never gets cheaper per item; at worst quadratic.
    c, e = _fit(sizes, [h["build_s"] for h in history], lo=1.0, hi=2.0)
    out["build_s"] = c * n**e
    out["build_exponent"] = round(e, 3)
    out["build_items_per_s"] = n / out["build_s"]
    indexed = [h for h in history if h.get("indexed_vectors") == h["n"] and h["optimize_s"] > 0]
    if indexed:
        # HNSW construction costs about n log n; small sizes may stay unindexed (plain
        # segments under the indexing threshold), so scale from the largest indexed size.
        ref = indexed[-1]
        growth = (n * math.log(n)) / (ref["n"] * math.log(ref["n"]))
        out["optimize_s"] = ref["optimize_s"] * growth
        out["ingest_s"] = ref["ingest_s"] * n / ref["n"]
        out["build_s"] = out["optimize_s"] + out["ingest_s"]
        out["build_items_per_s"] = n / out["build_s"]
        out["build_exponent"] = "n log n from the largest indexed size"
    for key in ("single_p50_ms", "batch_per_query_ms", "rss_added_mb"):
        c, e = _fit(sizes, [max(h[key], 1e-6) for h in history])
        out[key] = c * n**e
        out[f"{key}_exponent"] = round(e, 3)
    return out


def _round_floats(obj: Any, nd: int = 3) -> Any:
    if isinstance(obj, float):
        return round(obj, nd) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _round_floats(v, nd) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_floats(v, nd) for v in obj]
    return obj


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    try:
        import qdrant_edge  # noqa: F401
    except ImportError:
        dropped = [b for b in backends if b.startswith("edge")]
        backends = [b for b in backends if not b.startswith("edge")]
        console.print(f"qdrant-edge-py not installed: skipping {dropped}")
    work = Path(tempfile.mkdtemp(prefix="bench-search-", dir=args.workdir))
    results: dict[str, dict[str, Any]] = {b: {} for b in backends}
    history: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    load_samples: list[float] = [os.getloadavg()[0]]
    t_start = time.perf_counter()
    queries = make_vectors(
        max(args.single, args.batch * args.batches), args.dim, args.centres, args.seed, stream=1
    )
    np.save(work / "queries.npy", queries)
    steps = len(sizes) * len(backends) * (args.rounds + 1)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("bench_search", total=steps)
        for n in sizes:
            progress.update(task, description=f"n={n:,}: generating data")
            data = make_vectors(n, args.dim, args.centres, args.seed, stream=0)
            np.save(work / "data.npy", data)
            progress.update(task, description=f"n={n:,}: exact top-{TOP_K} (ground truth)")
            np.save(work / "truth.npy", exact_top_k(data, queries[: args.single], TOP_K))
            del data
            jobs: dict[str, Job] = {}
            for b in backends:
                if history[b]:
                    guess = project(history[b], n)
                    if guess["build_s"] > args.max_step_s:
                        guess["reason"] = (
                            f"skipped: the build would take about {guess['build_s']:.0f} s "
                            f"(projected from n={[h['n'] for h in history[b]]}), over the "
                            f"{args.max_step_s:.0f}-s limit per step"
                        )
                        results[b][str(n)] = {"skipped": True, **guess}
                        progress.advance(task, args.rounds + 1)
                        continue
                progress.update(task, description=f"n={n:,}: building {b}")
                folder = work / f"{b}-{n}"
                cmd = [
                    sys.executable, __file__, "--worker", b,
                    "--data", str(work / "data.npy"), "--queries", str(work / "queries.npy"),
                    "--truth", str(work / "truth.npy"), "--workdir", str(folder),
                    "--single", str(args.single), "--batch", str(args.batch),
                    "--batches", str(args.batches), "--ingest-batch", str(args.ingest_batch),
                ]  # fmt: skip
                job = Job(cmd)
                ready = job.read()
                ready.pop("event")
                results[b][str(n)] = {"n": n, **ready, "rounds": []}
                jobs[b] = job
                progress.advance(task)
            for r in range(args.rounds):
                for b, job in jobs.items():
                    progress.update(task, description=f"n={n:,}: round {r + 1} {b}")
                    out = job.send("round")
                    out.pop("event")
                    load_samples.append(out["load_avg_1m"])
                    results[b][str(n)]["rounds"].append(out)
                    progress.advance(task)
            for b, job in jobs.items():
                row = results[b][str(n)]
                row["recall_at_10"] = job.finish()["recall_at_10"]
                for key in ("single_p50_ms", "single_p99_ms", "batch_per_query_ms"):
                    row[key] = float(np.median([rd[key] for rd in row["rounds"]]))
                history[b].append(row)
                shutil.rmtree(work / f"{b}-{n}", ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)

    # Ratios against the exact index measured in the same run.
    for b in backends:
        for key, row in results[b].items():
            ref = results.get("exact", {}).get(key)
            if b == "exact" or not ref or row.get("skipped") or ref.get("skipped"):
                continue
            row["vs_exact"] = {
                "single_p50": row["single_p50_ms"] / ref["single_p50_ms"],
                "batch_per_query": row["batch_per_query_ms"] / ref["batch_per_query_ms"],
                "build_items_per_s": row["build_items_per_s"] / ref["build_items_per_s"],
            }
    cores = os.cpu_count() or 1
    report = {
        "bench": "search",
        "device": cpu_name(),
        "cpu_count": cores,
        "dim": args.dim,
        "centres": args.centres,
        "seed": args.seed,
        "top_k": TOP_K,
        "single_queries_per_round": args.single,
        "batch_size": args.batch,
        "batches_per_round": args.batches,
        "rounds": args.rounds,
        "ingest_batch": args.ingest_batch,
        "versions": _versions(),
        "wall_s": time.perf_counter() - t_start,
        "load_avg_1m": {"min": min(load_samples), "max": max(load_samples)},
        "noise_note": (
            "machine shared with other jobs: rounds of all backends are interleaved and "
            "each figure is the median of the rounds; latencies can still be noisy"
            if args.shared
            else "medians of interleaved rounds"
        ),
        "notes": {
            "local": "QdrantStore on qdrant-client local mode at a path (the project default); "
            "it writes each point in its own SQLite transaction, so batching upserts does "
            "not help, and scores one query at a time in numpy",
            "edge": "EdgeStore on qdrant-edge-py as written: appendable plain segments, exact "
            "search in Rust; no optimize()",
            "edge_hnsw": "EdgeStore after optimize(): HNSW (m 16, ef_construct 100, defaults); "
            "build_s includes ingest and the optimize, which holds the interpreter",
            "exact": "core/exact_index.py ExactIndex (numpy matrix, blocked top-k)",
            "memory": "rss_added_mb: the backend process's VmRSS after the build minus before "
            "it (data set already loaded); edge's vectors are memory-mapped and count once "
            "resident",
        },
        "results": results,
    }
    report = _round_floats(report)
    return report


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("qdrant-client", "qdrant-edge-py", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def earlier_rows(old: dict[str, Any]) -> dict[str, Any]:
    """The measured (not projected) rows of an earlier report, with its conditions."""
    keep = (
        "build_s", "build_items_per_s", "ingest_items_per_s", "optimize_s", "indexed_vectors",
        "single_p50_ms", "single_p99_ms", "batch_per_query_ms", "recall_at_10",
        "rss_added_mb", "peak_rss_mb",
    )  # fmt: skip
    rows = {
        backend: {n: {k: row[k] for k in keep if k in row} for n, row in by_n.items()}
        for backend, by_n in old["results"].items()
    }
    return {
        "note": "an earlier run of this script on the same data (same seed), kept because it "
        "measured what the main run had to project; compare with care: the load differed",
        "wall_s": old.get("wall_s"),
        "load_avg_1m": old.get("load_avg_1m"),
        "results": {
            b: {n: r for n, r in by_n.items() if not old["results"][b][n].get("skipped")}
            for b, by_n in rows.items()
        },
    }


def plot(report: dict[str, Any], path: Path) -> bool:
    """Latency and ingest rate against catalogue size; projections drawn hollow and dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        ("single_p50_ms", "single query p50 (ms)"),
        ("batch_per_query_ms", "per query in batches of 64 (ms)"),
        ("build_items_per_s", "build / ingest (items/s)"),
        ("rss_added_mb", "resident memory added (MiB)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, (backend, rows) in enumerate(report["results"].items()):
            colour = f"C{i}"
            pts = sorted((int(n), row) for n, row in rows.items())
            measured = [(n, r[key]) for n, r in pts if not r.get("skipped") and r.get(key)]
            guessed = [(n, r[key]) for n, r in pts if r.get("skipped") and r.get(key)]
            if measured:
                ax.plot(*zip(*measured, strict=True), "o-", color=colour, label=backend)
            if guessed and measured:
                line = [measured[-1], *guessed]
                ax.plot(*zip(*line, strict=True), "--", color=colour)
                ax.plot(*zip(*guessed, strict=True), "o", mfc="none", color=colour)
            earlier = report.get("earlier_run", {}).get("results", {}).get(backend, {})
            extra = [
                (int(n), r[key])
                for n, r in earlier.items()
                if r.get(key) and rows.get(n, {}).get("skipped")
            ]
            if extra:
                ax.plot(*zip(*extra, strict=True), "*", ms=12, color=colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("items")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        "Vector search vs catalogue size (hollow, dashed: extrapolated, not measured; "
        "star: measured in the earlier run)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single", type=int, default=100, help="single queries per round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=3, help="batches per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ingest-batch", type=int, default=10_000)
    ap.add_argument("--max-step-s", type=float, default=600.0)
    ap.add_argument("--shared", action="store_true", help="note a shared machine in the JSON")
    ap.add_argument("--out", type=Path, default=RESULTS / "search.json")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: system temp)")
    ap.add_argument(
        "--earlier",
        type=Path,
        help="attach this earlier report (its measured rows only) under 'earlier_run'",
    )
    ap.add_argument("--earlier-note", default="", help="what differed in the earlier run")
    ap.add_argument(
        "--replot", action="store_true", help="measure nothing: reread --out, attach, plot"
    )
    # Worker mode (internal).
    ap.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--queries", help=argparse.SUPPRESS)
    ap.add_argument("--truth", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.backend = args.worker
        worker(args)
        return None
    report = json.loads(args.out.read_text()) if args.replot else run(args)
    if args.earlier:
        report["earlier_run"] = earlier_rows(json.loads(args.earlier.read_text()))
        if args.earlier_note:
            report["earlier_run"]["note"] += f"; {args.earlier_note}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    if plot(report, png):
        report["plot"] = str(png.relative_to(REPO_ROOT) if png.is_relative_to(REPO_ROOT) else png)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
