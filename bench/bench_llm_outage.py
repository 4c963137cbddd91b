"""Demo throughput while the LLM endpoint hangs, errors or talks garbage.

Runs ``genre demo`` (MovieLens-100k through the embedded broker and a real worker
process) once per LLM condition, with item enrichment and profiles on, and compares
event throughput with a healthy endpoint measured in the same process:

* ``offline``: the deterministic offline backend (no endpoint at all);
* ``ok``: a local OpenAI-compatible server (``tests/llm_server.py``) answering valid
  JSON after ``--delay`` seconds: the baseline the outages are compared with;
* ``slow``: the server hangs (answers after 60 s, far past ``llm.timeout_s``);
* ``error``: HTTP 500 on every call;
* ``malformed``: HTTP 200 whose content is not JSON.

The LLM settings are genre.yaml's (timeout, retries, breaker, rate limit), with
``cache_path: null`` so every run starts cold. Clicks are offered faster than the
worker can process them (``--rate``), so ``throughput_eps`` (clicks over the time
from the first click to the last recommendation) is the pipeline's capacity, not
the offered rate. Runs are noisy on a shared 2-core machine, so ``--repeat`` runs
every mode that many times, interleaved (ok, slow, ..., ok, slow, ...), and the
table compares medians. Prints a table and one JSON line; writes
``bench/results/llm_outage.json``.

    python bench/bench_llm_outage.py                   # 12000 clicks at 2000/s, 2 rounds
    python bench/bench_llm_outage.py --events 1500 --modes ok,error
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from machine import save_result
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/llm_server.py is the local endpoint

from genre.core.config import load_config  # noqa: E402
from genre.demo import run_demo  # noqa: E402
from tests.llm_server import LLMTestServer  # noqa: E402

MODES = ("offline", "ok", "slow", "error", "malformed")
BASELINE = "ok"


def run(mode: str, events: int, rate: float, delay: float, console: Console) -> dict[str, Any]:
    """One demo run under ``mode``; the demo summary plus the mode."""
    llm: dict[str, Any] = {"cache_path": None}
    server = None
    if mode != "offline":
        server = LLMTestServer("ok" if mode == "ok" else mode, slow_s=60.0, delay_s=delay)
        server.start()
        llm.update(backend="openai", base_url=server.base_url, model="test-model")
    try:
        cfg = load_config(
            REPO / "genre.yaml", overrides={"llm": llm, "demo": {"drain_timeout_s": 180.0}}
        )
        console.rule(f"LLM {mode}")
        summary = run_demo(cfg, events=events, rate=rate, console=console)
    finally:
        if server is not None:
            server.stop()
    return {"mode": mode, **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=12000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds over every mode")
    parser.add_argument("--rate", type=float, default=2000.0, help="offered clicks/s")
    parser.add_argument("--delay", type=float, default=0.05, help="ok-mode answer delay, s")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/llm_outage.json")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for m in modes:
            samples[m].append(run(m, args.events, args.rate, args.delay, console))
    median = {m: statistics.median(r["throughput_eps"] for r in rs) for m, rs in samples.items()}
    base_mode = BASELINE if BASELINE in modes else modes[0]
    table = Table(title=f"demo throughput by LLM condition ({args.events} clicks, medians)")
    for col in ("LLM", "clicks/s", "vs " + base_mode, "runs", "p50 ms", "lists", "dlq"):
        table.add_column(col, justify="right")
    rows = []
    for mode, rs in samples.items():
        ratio = median[mode] / median[base_mode] if median[base_mode] else 0.0
        rows.append(
            {
                "mode": mode,
                "throughput_eps": median[mode],
                "ratio_vs_baseline": round(ratio, 3),
                "runs": [_run_row(r) for r in rs],
            }
        )
        table.add_row(
            mode,
            f"{median[mode]:.0f}",
            f"{ratio:.2f}",
            " ".join(f"{r['throughput_eps']:.0f}" for r in rs),
            " ".join(f"{r['latency_ms']['p50']:.0f}" for r in rs),
            " ".join(str(r["recommendations_out"]) for r in rs),
            " ".join(str(r["events_dlq"]) for r in rs),
        )
    console.print(table)
    result = {
        "events": args.events,
        "offered_eps": args.rate,
        "ok_delay_s": args.delay,
        "repeat": args.repeat,
        "baseline": base_mode,
        "modes": rows,
        "worst_ratio": min(r["ratio_vs_baseline"] for r in rows),
    }
    save_result(result, args.out)
    return 0


def _run_row(r: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "throughput_eps",
        "latency_ms",
        "recommendations_out",
        "users_with_recommendations",
        "users_seen",
        "events_consumed_by_worker",
        "events_dlq",
        "model_versions",
        "llm",
    )
    return {k: r[k] for k in keys}


if __name__ == "__main__":
    raise SystemExit(main())
