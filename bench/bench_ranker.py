"""Benchmark GENRE's ranker: ONNX Runtime (fp32/fp16/int8) vs PyTorch eager on the same inputs.

Usage: python bench/bench_ranker.py [--checkpoint .cache/models/ranker-checkpoint.pt]
       [--repeats 20] [--threads 1] [--min-seconds 0.75]

The checkpoint is exported with ``genre.export.export_ranker`` into a temporary
directory (so the parity figures come along); ONNX rows run the serving runner,
``genre.workers.ranker.OnnxRanker``, with the worker's session options. Without a checkpoint a
randomly initialised model of the default ``RankerShape`` shape is used: timing
does not depend on the weights, and the JSON says so.

Scorer: item-tower outputs are precomputed (as the worker caches them); one call =
user encoder + scorer for a batch of users x 200 candidates with 50-click
histories; reported as candidates scored per second and p50/p99 latency per call.
Item tower: items per second at batch 1024. Every backend gets the same arrays.
ONNX Runtime runs on the CPU provider, plus CUDA / TensorRT when
``onnxruntime.get_available_providers()`` lists them. Prints rich progress on
stderr and one JSON object on the last line of stdout; writes
``bench/results/ranker.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_name, memory_mb, save_result
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / ".cache" / "models" / "ranker-checkpoint.pt"
RESULTS = REPO_ROOT / "bench" / "results" / "ranker.json"
BATCHES = (1, 32, 256)
CANDIDATES = 200
HISTORY = 50
ITEM_BATCH = 1024
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def rss_mb() -> dict[str, float]:
    """Current and peak resident set size of this process, MiB."""
    current, peak = memory_mb()
    out = {"peak": peak, "current": current}
    return {k: round(v, 1) for k, v in out.items() if not math.isnan(v)}


def gpu_info() -> tuple[str | None, str]:
    """(GPU name, note): nvidia-smi first, then torch.cuda."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
            if out:
                return out.splitlines()[0], "from nvidia-smi"
        except (subprocess.SubprocessError, OSError) as exc:
            note = f"nvidia-smi failed: {exc}"
        else:
            note = "nvidia-smi lists no GPU"
    else:
        note = "nvidia-smi not found"
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), "from torch.cuda"
        note += f"; torch {torch.__version__} sees no CUDA device"
    except ImportError:
        pass
    return None, note


def time_calls(
    fn: Callable[[], Any], repeats: int, min_seconds: float, warmup: int = 3
) -> dict[str, float]:
    """Warm up, then call ``fn`` at least ``repeats`` times and for at least ``min_seconds``."""
    for _ in range(warmup):
        fn()
    lat: list[float] = []
    start = time.perf_counter()
    while len(lat) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
        if len(lat) >= 20_000:
            break
    ms = np.array(lat) * 1000.0
    return {
        "calls": len(lat),
        "seconds": round(float(ms.sum() / 1000.0), 4),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def build_checkpoint(path: Path | None, workdir: Path, cfg: Any = None) -> tuple[Path, str | None]:
    """The checkpoint to export, or a random one (with a note) of shape ``cfg``
    (a ``RankerShape``; the default shape when None)."""
    if path is not None and path.is_file():
        return path, None
    import torch

    from genre.model_export.ranker import GenreRanker, RankerShape

    torch.manual_seed(0)
    cfg = cfg or RankerShape()
    model = GenreRanker(cfg).eval()
    ckpt = workdir / "random-ranker.pt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "config": cfg.to_dict(),
            "id_vocab": [f"item-{i}" for i in range(cfg.n_ids - 1)],
            "feature_spec": {
                "history_len": cfg.history_len,
                "feature_names": ["trending", "co_click"][: cfg.n_features],
            },
            "history": [],
            "best_epoch": 0,
        },
        ckpt,
    )
    note = (
        f"no checkpoint at {path}: randomly initialised weights of the default RankerShape "
        "shape (timing does not depend on the weights; parity figures are for random weights)"
    )
    return ckpt, note


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--repeats", type=int, default=20, help="minimum timed calls per case")
    ap.add_argument("--min-seconds", type=float, default=0.75, help="minimum timed s per case")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for torch and ONNX Runtime alike (default 1: on a shared or "
        "oversubscribed CPU, spinning thread pools stall and p99 explodes)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    t_start = time.perf_counter()

    import onnxruntime as ort
    import torch

    from genre.export import export_ranker
    from genre.model_export.ranker_export import (
        PRECISIONS,
        TorchRanker,
        make_parity_inputs,
        torch_reference,
    )
    from genre.workers.ranker import OnnxRanker

    torch.set_num_threads(args.threads)
    gpu, gpu_note = gpu_info()
    available = ort.get_available_providers()
    gpu_providers = [p for p in GPU_PROVIDERS if p in available]
    if not gpu_providers:
        gpu_note += f"; onnxruntime {ort.__version__} providers {available}: GPU rows skipped"

    work = Path(tempfile.mkdtemp(prefix="genre-bench-ranker-"))
    try:
        ckpt, weights_note = build_checkpoint(args.checkpoint, work)
        manifest = export_ranker(ckpt, work / "model", console=console)
        ref: TorchRanker = torch_reference(ckpt)
        cfg = ref.cfg
        history = min(HISTORY, int(cfg.history_len))
        max_b = max(BATCHES)
        x = make_parity_inputs(cfg, batch=max_b, candidates=CANDIDATES, history=history, seed=7)
        # The worker caches item representations: precompute them once with PyTorch.
        b, h, t = x.history_text.shape
        hist = ref.item_tower(x.history_text.reshape(-1, t), x.history_ids.reshape(-1))
        hist = np.ascontiguousarray(hist.reshape(b, h, -1) * x.mask[..., None], np.float32)
        cands = ref.item_tower(x.cand_text.reshape(-1, t), x.cand_ids.reshape(-1))
        cands = np.ascontiguousarray(cands.reshape(b, CANDIDATES, -1), np.float32)
        per_batch = {
            n: (
                np.ascontiguousarray(hist[:n]),
                np.ascontiguousarray(x.mask[:n]),
                np.ascontiguousarray(cands[:n]),
                np.ascontiguousarray(x.features[:n]),
            )
            for n in BATCHES
        }
        rng = np.random.default_rng(3)
        item_text = rng.standard_normal((ITEM_BATCH, int(cfg.text_dim))).astype(np.float32)
        item_text /= np.linalg.norm(item_text, axis=1, keepdims=True)
        item_ids = rng.integers(0, max(int(cfg.n_ids), 1), ITEM_BATCH, dtype=np.int64)

        backends: list[tuple[str, Callable[[], Any]]] = [("torch_eager_fp32_cpu", lambda: ref)]
        provider_sets = [("cpu", ["CPUExecutionProvider"])]
        for p in gpu_providers:
            short = "tensorrt" if p.startswith("Tensorrt") else "cuda"
            provider_sets.append((short, [p, "CPUExecutionProvider"]))
        for short, providers in provider_sets:
            for prec in PRECISIONS:

                def opener(prec: str = prec, providers: list[str] = providers) -> OnnxRanker:
                    # Explicit providers: a session that falls back raises ProviderError.
                    return OnnxRanker(work / "model", prec, providers, threads=args.threads)

                backends.append((f"ort_{prec}_{short}", opener))

        scorer: dict[str, Any] = {}
        item_tower: dict[str, Any] = {}
        memory: dict[str, Any] = {}
        errors: dict[str, str] = {}
        n_cases = len(backends) * (len(BATCHES) + 1)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("benchmarking", total=n_cases)
            for name, open_backend in backends:
                try:
                    be = open_backend()
                except Exception as exc:  # e.g. TensorRT without int8 calibration
                    errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    progress.advance(task, len(BATCHES) + 1)
                    continue
                scorer[name] = {}
                for n in BATCHES:
                    progress.update(task, description=f"{name} scorer batch {n}")
                    hb, mb, cb, fb = per_batch[n]

                    def call(be: Any = be, hb=hb, mb=mb, cb=cb, fb=fb) -> Any:
                        user = be.user_encoder(hb, mb)
                        return be.score_head(user, hb, mb, cb, fb)

                    try:
                        stats = time_calls(call, args.repeats, args.min_seconds)
                    except Exception as exc:
                        errors[f"{name}/scorer/{n}"] = f"{type(exc).__name__}: {exc}"[:300]
                        progress.advance(task)
                        continue
                    rate = n * CANDIDATES * stats["calls"] / stats["seconds"]
                    scorer[name][str(n)] = {
                        "candidates_per_s": round(rate, 1),
                        "candidates_per_s_at_p50": round(n * CANDIDATES / stats["p50_ms"] * 1e3, 1),
                        "users_per_s": round(rate / CANDIDATES, 1),
                        **stats,
                    }
                    progress.advance(task)
                progress.update(task, description=f"{name} item tower")
                try:
                    stats = time_calls(
                        lambda be=be: be.item_tower(item_text, item_ids),
                        args.repeats,
                        args.min_seconds,
                    )
                    item_tower[name] = {
                        "items_per_s": round(ITEM_BATCH * stats["calls"] / stats["seconds"], 1),
                        "items_per_s_at_p50": round(ITEM_BATCH / stats["p50_ms"] * 1e3, 1),
                        **stats,
                    }
                except Exception as exc:
                    errors[f"{name}/item_tower"] = f"{type(exc).__name__}: {exc}"[:300]
                progress.advance(task)
                memory[name] = rss_mb()
                del be

        base = "torch_eager_fp32_cpu"
        speedup: dict[str, Any] = {}
        for name in scorer:
            if name == base:
                continue
            speedup[name] = {
                f"scorer_batch_{n}": round(
                    scorer[base][str(n)]["p50_ms"] / scorer[name][str(n)]["p50_ms"], 2
                )
                for n in BATCHES
                if str(n) in scorer[name] and str(n) in scorer.get(base, {})
            }
            if name in item_tower and base in item_tower:
                speedup[name]["item_tower"] = round(
                    item_tower[base]["p50_ms"] / item_tower[name]["p50_ms"], 2
                )
        parity = {
            g: {
                e.precision: (
                    None
                    if e.parity is None
                    else {
                        "max_abs_error": e.parity.max_abs_error,
                        "top10_agreement": e.parity.top10_agreement,
                    }
                )
                for e in entries
            }
            for g, entries in manifest.graphs.items()
        }
        result: dict[str, Any] = {
            "bench": "ranker",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "gpu": gpu,
            "gpu_note": gpu_note,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnxruntime": ort.__version__,
                "providers": available,
            },
            "model": {
                "version": manifest.version,
                "config": manifest.config,
                "checkpoint": str(ckpt) if weights_note is None else None,
                "random_weights": weights_note is not None,
                "note": weights_note,
            },
            "shape": {
                "batches": list(BATCHES),
                "candidates": CANDIDATES,
                "history": history,
                "item_batch": ITEM_BATCH,
                "repeats_min": args.repeats,
                "min_seconds": args.min_seconds,
                "scorer_call": "user_encoder + scorer (item tower outputs precomputed)",
            },
            "score_head": scorer,
            "item_tower": item_tower,
            "speedup_vs_torch_eager": speedup,
            "speedup_note": (
                "ratio of p50 latency per call (torch eager fp32 CPU / backend), the same as the "
                "ratio of throughput at p50; p50 is robust to other load on a shared CPU, and "
                "candidates_per_s (mean over all timed calls) is reported too"
            ),
            "parity": parity,
            "rss_mb_after_backend": memory,
            "peak_rss_mb": rss_mb()["peak"],
            "rss_note": (
                "one process: torch is loaded throughout and every backend's sessions are "
                "created in turn, so figures are cumulative high-water marks"
            ),
            "errors": errors,
            "seconds": round(time.perf_counter() - t_start, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title="GENRE ranker: candidates scored / s (user encoder + scorer)")
    table.add_column("backend")
    for n in BATCHES:
        table.add_column(f"batch {n}", justify="right")
    table.add_column(f"item tower {ITEM_BATCH}", justify="right")
    for name, rows in scorer.items():
        cells = [
            f"{rows[str(n)]['candidates_per_s']:,.0f} ({rows[str(n)]['p50_ms']:.2f} ms)"
            if str(n) in rows
            else "-"
            for n in BATCHES
        ]
        items = item_tower.get(name, {}).get("items_per_s")
        table.add_row(name, *cells, f"{items:,.0f}/s" if items else "-")
    console.print(table)

    save_result(result, args.out, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
