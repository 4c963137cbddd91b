"""`genre tune --what blend` end to end on a small click log: the study, the overlay
(which `genre evaluate --overlay` takes as is), the report, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_ranker_cli import genre, workspace

pytest.importorskip("optuna")
pytestmark = pytest.mark.timeout(300)

__all__ = ["workspace"]  # the fixture, shared with test_ranker_cli


def test_tune_blend_writes_overlay_and_report_and_resumes(workspace: dict[str, Path]) -> None:
    cfg = ["-c", str(workspace["config"])]
    log = ["--clicks", str(workspace["clicks"]), "--items", str(workspace["items"])]
    out = workspace["root"] / "tune"
    args = ["tune", *cfg, *log, "--what", "blend", "--study", "t", "--out-dir", str(out)]
    done = genre(*args, "--trials", "3", "--seed", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["trials"] == 3 and summary["best"]["valid_ndcg@10"] >= 0.0
    assert summary["base_valid_ndcg@10"] is not None  # trial 0: the config as it is
    assert set(summary["test"]) == {"base", "tuned"}
    assert "trial   0" in done.stderr and "best" in done.stderr
    for name in ("t.db", "t.best.yaml", "t.report.json", "t.report.md", "t.history.png"):
        assert (out / name).stat().st_size > 0, name

    overlay = ["--overlay", str(out / "t.best.yaml")]
    shown = genre("config", "show", *cfg, *overlay)
    assert shown.returncode == 0 and "overlay" in shown.stderr, shown.stderr[-2000:]

    again = genre(*args, "--trials", "2", "--sampler", "random")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["trials"] == 5
    assert "trial   4" in again.stderr

    wrong = genre(*args, "--trials", "1", "--what", "ranker")
    assert wrong.returncode == 2 and "tunes 'blend'" in wrong.stdout + wrong.stderr


def test_tune_ranker_trains_per_trial_and_reports_test_figures(
    workspace: dict[str, Path],
) -> None:
    cfg = ["-c", str(workspace["config"])]
    log = ["--clicks", str(workspace["clicks"]), "--items", str(workspace["items"])]
    out = workspace["root"] / "tune-ranker"
    done = genre(
        "tune", *cfg, *log, "--what", "ranker", "--trials", "2", "--study", "r",
        "--out-dir", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "ranker" and summary["completed"] + summary["pruned"] == 2
    assert {"ndcg@10", "hr@10"} <= set(summary["test"]["tuned"])
    assert (out / "r.best.yaml").is_file()


def test_tune_baseline_writes_params_that_genre_evaluate_reproduces(
    workspace: dict[str, Path],
) -> None:
    cfg = ["-c", str(workspace["config"])]
    log = ["--clicks", str(workspace["clicks"]), "--items", str(workspace["items"])]
    out = workspace["root"] / "tune-baseline"
    done = genre(
        "tune", *cfg, *log, "--what", "baseline", "--baseline", "bpr", "--trials", "2",
        "--sampler", "random", "--out-dir", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "baseline" and summary["study"] == "bpr"  # named after it
    assert summary["trials"] == 2 and set(summary["test"]) == {"default", "tuned"}
    assert "trial   1" in done.stderr
    params = out / "bpr.best.json"
    assert json.loads(params.read_text()) == {"bpr": summary["best"]["params"]}

    evaluated = genre(
        "evaluate", *cfg, *log, "--models", "bpr", "--baseline-params", str(params),
        "--out-dir", str(workspace["root"] / "eval-tuned"), "--json",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert report["params"]["bpr"]["val_ndcg@10"] == summary["best"]["valid_ndcg@10"]
    for key in ("hr@10", "ndcg@10", "mrr"):
        assert report["models"]["bpr"][key] == summary["test"]["tuned"][key], key
