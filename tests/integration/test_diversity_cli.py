"""`genre evaluate --diversity-sweep --from-checkpoint`: the frontier from a trained ranker,
with the beyond-accuracy metrics for every model, on a small JSONL click log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_ranker_cli import genre, workspace

pytestmark = pytest.mark.timeout(600)

__all__ = ["workspace"]  # the fixture, shared with test_ranker_cli


def test_sweep_from_a_checkpoint_writes_the_frontier(workspace: dict[str, Path]) -> None:
    cfg = ["-c", str(workspace["config"])]
    log = ["--clicks", str(workspace["clicks"]), "--items", str(workspace["items"])]
    done = genre("train", *cfg, *log, "--epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    out_dir = workspace["root"] / "frontier"
    done = genre(
        "evaluate",
        *cfg,
        *log,
        "--models",
        "genre,popularity",
        "--diversity-sweep",
        "1,0.5,1:0.5",
        "--from-checkpoint",
        "--out-dir",
        str(out_dir),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ranker"] == "checkpoint" and summary["params"]["genre"]["from"] == "checkpoint"
    for row in summary["models"].values():
        assert {"ild@10", "novelty@10", "gini@10", "coverage@10"} <= set(row)
        assert 0.0 <= row["ild@10"] <= 2.0 and 0.0 <= row["gini@10"] <= 1.0
    frontier = {(r["lambda"], r["popularity_weight"]): r for r in summary["frontier"]}
    assert set(frontier) == {(1.0, 0.0), (0.5, 0.0), (1.0, 0.5)}
    # lambda=1 without a penalty is the GENRE row itself.
    plain = {
        k: v for k, v in frontier[(1.0, 0.0)].items() if k not in ("lambda", "popularity_weight")
    }
    assert plain == summary["models"]["genre"]
    assert frontier[(0.5, 0.0)]["ild@10"] >= plain["ild@10"]
    assert summary["target"]["met"] in (True, False)
    assert (out_dir / "diversity_frontier.png").stat().st_size > 1000
    assert json.loads((out_dir / "diversity_frontier.json").read_text())["frontier"]

    refused = genre("evaluate", *cfg, *log, "--diversity-sweep", "1.5")
    assert refused.returncode == 2 and "lambda in [0, 1]" in refused.stdout + refused.stderr
