"""The bandit on the live pipeline: `genre demo --arms` with a fixed split, then with
Thompson sampling, on the same replayed clicks, and the traffic share and regret of each.

Two arms, one known to be worse: ``full`` (every candidate source, blended) and
``trending`` (the trending source alone). Both run without the learned ranker so the
comparison costs the same CPU. Each policy replays the last ``--events`` clicks of
MovieLens-100k at ``--rate`` clicks/s through a fresh broker and worker (the demo);
meanwhile this script reads the worker's ``/metrics`` every ``--every-s`` seconds:
``genre_arm_share`` and each arm's online clicks and hits.

Regret at time t: the hits lost against sending every click to the better arm, with
each arm's true hit rate taken as its online HR@10 over the fixed-split run:
``sum over arms of clicks_arm(t) * (HR_best - HR_arm)``.

    python bench/bench_bandit_live.py                    # 20,000 clicks at 100/s, per policy
    python bench/bench_bandit_live.py --events 5000      # a quick look

Writes ``bench/results/bandit_live.json`` and ``bandit_live.png`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from machine import cpu_name, save_result
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
ARMS = [
    {"name": "full", "share": 0.5, "ranker": "off"},
    {
        "name": "trending",
        "share": 0.5,
        "ranker": "off",
        "scorer": {"candidates": [{"name": "trending", "weight": 1.0, "limit": 100}]},
    },
]


def _config(tmp: Path, policy: str, every_s: float) -> Path:
    """genre.yaml for one run: the repository's, with the experiment on."""
    data = yaml.safe_load((REPO / "genre.yaml").read_text())
    data["data_dir"] = str(REPO / ".cache")  # shares the dataset and encoder caches
    data["encoder"]["dir"] = str(REPO / ".cache" / "models" / "encoder")
    data["experiments"] = {
        "enabled": True,
        "salt": "bench-bandit",
        "policy": policy,
        "floor": 0.1,
        "update_s": every_s,
        "arms": ARMS,
    }
    path = tmp / f"genre-{policy}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _scrape(port: int) -> dict[str, dict[str, float]]:
    """Per arm: share, online clicks and hits, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[str, float]] = {}
    names = {
        "genre_arm_share": "share",
        "genre_arm_online_clicks_total": "clicks",
        "genre_arm_online_hits_total": "hits",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key and "arm" in sample.labels:
                out.setdefault(sample.labels["arm"], {})[key] = sample.value
    return out


def run_policy(policy: str, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """One demo run under ``policy``, with the arms' metrics sampled over time."""
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp), policy, args.every_s)
        command = [sys.executable, "-m", "genre", "demo", "--config", str(config), "--arms"]
        command += ["--events", str(args.events), "--rate", str(args.rate), "--json"]
        demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        run_config = REPO / ".cache" / "demo-run" / "genre.yaml"
        started = time.time()
        port = None
        series: list[dict[str, Any]] = []
        while demo.poll() is None:
            time.sleep(args.every_s)
            if port is None and run_config.exists() and run_config.stat().st_mtime >= started:
                port = yaml.safe_load(run_config.read_text())["streams"]["web_port"]
            if port is None:
                continue
            try:
                arms = _scrape(port)
            except OSError:
                continue  # not up yet, or already stopped
            if arms:
                series.append({"t": round(time.time() - started, 1), "arms": arms})
                share = {a: round(v.get("share", 0.0), 3) for a, v in arms.items()}
                console.print(f"{policy} t={series[-1]['t']:.0f}s shares {share}", highlight=False)
        out, _ = demo.communicate()
        if demo.returncode != 0:
            raise SystemExit(f"genre demo ({policy}) exited with {demo.returncode}")
        summary = json.loads(out.decode().strip().splitlines()[-1])
    return {"series": series, "summary": summary}


def _regret(series: list[dict[str, Any]], rates: dict[str, float]) -> list[float]:
    best = max(rates.values())
    return [
        sum(v.get("clicks", 0.0) * (best - rates.get(a, best)) for a, v in point["arms"].items())
        for point in series
    ]


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = result["better_arm"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for policy, run in result["runs"].items():
        t = [p["t"] for p in run["series"]]
        left.plot(
            t, [p["arms"].get(best, {}).get("share", 0.0) for p in run["series"]], label=policy
        )
        right.plot(t, run["regret"], label=policy)
    left.set(title=f"traffic share of '{best}'", xlabel="seconds", ylim=(0, 1))
    right.set(title="cumulative regret (hits lost)", xlabel="seconds")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--every-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bandit_live.json")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    runs = {policy: run_policy(policy, args, console) for policy in ("fixed", "thompson")}
    fixed_arms = runs["fixed"]["summary"]["arms"]["arms"]
    rates = {arm: row["hit_rate"] for arm, row in fixed_arms.items()}
    for run in runs.values():
        run["regret"] = [round(r, 1) for r in _regret(run["series"], rates)]
    better = max(rates, key=lambda a: rates[a])
    result = {
        "bench": "bandit_live",
        "machine": {"cpu": cpu_name()},
        "conditions": {
            "events": args.events,
            "rate": args.rate,
            "every_s": args.every_s,
            "arms": ARMS,
            "floor": 0.1,
            "window": "last clicks of ml-100k",
        },
        "true_rates_from_fixed_run": rates,
        "better_arm": better,
        "runs": runs,
        "final": {
            policy: {
                "share_of_better": run["series"][-1]["arms"][better].get("share")
                if run["series"]
                else None,
                "regret": run["regret"][-1] if run["regret"] else None,
                "arms": run["summary"]["arms"],
            }
            for policy, run in runs.items()
        },
    }
    _plot(result, args.out.with_suffix(".png"))
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
