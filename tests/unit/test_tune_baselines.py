"""genre tune --what baseline: the baselines' search spaces, the study's figures equal to
genre evaluate's, the test split kept out, and the JSON genre evaluate takes back."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

pytest.importorskip("optuna")

import optuna

from genre.model_export.baselines import BPR
from genre.model_export.evaluate import evaluate_models
from genre.model_export.pipeline import feature_spec
from genre.model_export.replay import TEST, build_interactions
from genre.model_export.tune import (
    TUNABLE_BASELINES,
    baseline_defaults,
    baseline_space,
    search_space,
    suggest,
)
from genre.model_export.tune_baselines import load_baseline_params, tune_baseline
from genre.model_export.tune_run import TuneOptions, open_study
from genre.model_export.zoo import BASELINES, build_baselines

from .test_tune import _base, _log, _vectors

QUIET = Console(stderr=True, quiet=True)


def _opts(name: str, trials: int) -> TuneOptions:
    return TuneOptions(mode="baseline", trials=trials, study=name, baseline=name, sampler="random")


@pytest.mark.parametrize("name", TUNABLE_BASELINES)
def test_every_trial_builds_the_baseline_and_trial_zero_is_its_defaults(name: str) -> None:
    knobs = baseline_space(name)
    params = baseline_defaults(name, knobs)
    signature = inspect.signature(BASELINES[name].__init__).parameters
    assert params == {k: signature[k].default for k in params}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(4):
        trial = study.ask()
        kwargs = suggest(trial, knobs)
        assert set(kwargs) == {k.key for k in knobs}
        (model,) = build_baselines([name], **{name: kwargs})
        for key, value in kwargs.items():
            assert getattr(model, key) == value
        study.tell(trial, 0.0)


def test_space_names_and_limits() -> None:
    with pytest.raises(ValueError, match="no search space"):
        baseline_space("popularity")
    with pytest.raises(ValueError, match="baseline_space"):
        search_space(_base(), "baseline")
    # SASRec scores from the replay's history: no window longer than it.
    (max_len,) = [k for k in baseline_space("sasrec", history_size=50) if k.key == "max_len"]
    assert max(max_len.choices) == 50 and 20 in max_len.choices
    assert max(next(k for k in baseline_space("sasrec") if k.key == "max_len").choices) > 50


def test_study_figures_are_genre_evaluates_and_its_json_reproduces_the_tuned_row(
    tmp_path: Path,
) -> None:
    items, clicks = _log()
    data = build_interactions(items, clicks)
    vectors = _vectors(data.n_items)
    cfg = _base()
    summary = tune_baseline(
        cfg, data, vectors, None, _opts("bpr", 3), out_dir=tmp_path, console=QUIET
    )
    assert summary["trials"] == 3 and summary["best"]["number"] in range(3)
    assert summary["best"]["valid_ndcg@10"] >= summary["base_valid_ndcg@10"]
    best_file = Path(summary["files"]["params"])
    assert json.loads(best_file.read_text()) == {"bpr": summary["best"]["params"]}
    for name in ("bpr.db", "bpr.report.json", "bpr.report.md", "bpr.history.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    def evaluate(overrides: dict) -> dict:
        report = evaluate_models(
            data,
            vectors,
            dataset="t",
            spec=feature_spec(cfg),
            baselines=["bpr"],
            baseline_overrides=overrides,
            include_genre=False,
        )
        return {"valid": report.params["bpr"]["val_ndcg@10"], **report.models["bpr"]}

    default = evaluate({})
    assert default["valid"] == summary["base_valid_ndcg@10"]
    assert default["ndcg@10"] == summary["test"]["default"]["ndcg@10"]
    tuned = evaluate(load_baseline_params([best_file]))
    assert tuned["valid"] == summary["best"]["valid_ndcg@10"]
    for key in ("hr@10", "ndcg@10", "mrr"):
        assert tuned[key] == summary["test"]["tuned"][key], key


def test_the_search_never_holds_a_test_click(tmp_path: Path) -> None:
    items, clicks = _log()
    data = build_interactions(items, clicks)
    vectors = _vectors(data.n_items)
    rng = np.random.default_rng(5)
    changed = [
        c.model_copy(update={"item_id": f"i{int(rng.integers(40))}"}) if k >= 540 else c
        for k, c in enumerate(sorted(clicks, key=lambda c: c.ts))
    ]
    other = build_interactions(items, changed)
    assert (other.items[other.split == TEST] != data.items[data.split == TEST]).any()
    values = []
    for run, log in enumerate((data, other)):
        summary = tune_baseline(
            _base(), log, vectors, None, _opts("lightgcn", 2), out_dir=tmp_path / str(run),
            console=QUIET,
        )  # fmt: skip
        values.append([h["value"] for h in summary["history"]])
    assert values[0] == values[1]
    with pytest.raises(ValueError, match="--what baseline --baseline lightgcn"):
        open_study(
            tmp_path / "0" / "lightgcn.db",
            TuneOptions(mode="baseline", study="lightgcn", baseline="bpr"),
        )


def test_each_epoch_goes_to_on_epoch_which_may_stop_the_fit() -> None:
    from genre.model_export.evaluate import _replay_train_valid, make_progress

    items, clicks = _log()
    data = build_interactions(items, clicks)
    vectors = _vectors(data.n_items)
    with make_progress(QUIET) as progress:
        valid = _replay_train_valid(
            data, vectors, feature_spec(_base()), None, len(data), 3, progress, None
        )
    seen: list[tuple[int, float]] = []

    class Stop(Exception):
        pass

    def on_epoch(epoch: int, value: float) -> None:
        seen.append((epoch, value))
        if epoch == 2:
            raise Stop

    model = BPR(epochs=5, patience=5)
    model.on_epoch = on_epoch
    with pytest.raises(Stop):
        model.fit(data, valid, vectors)
    assert [e for e, _ in seen] == [1, 2]
    assert [v for _, v in seen] == [h["val_ndcg@10"] for h in model.history]


def test_baseline_params_files_merge_and_are_checked(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"bpr": {"dim": 32, "lr": 0.01}, "sasrec": {"hidden": 32}}))
    b.write_text(json.dumps({"bpr": {"dim": 128}}))
    assert load_baseline_params([a, b]) == {
        "bpr": {"dim": 128, "lr": 0.01},
        "sasrec": {"hidden": 32},
    }
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bpr": {"hidden": 32}}))
    with pytest.raises(ValueError, match="takes no argument"):
        load_baseline_params([bad])
    bad.write_text(json.dumps({"bert4rec": {}}))
    with pytest.raises(ValueError, match="unknown baseline"):
        load_baseline_params([bad])
    bad.write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        load_baseline_params([bad])
    with pytest.raises(ValueError, match="cannot read"):
        load_baseline_params([tmp_path / "missing.json"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--what", "baseline"], "--baseline goes with --what baseline"),
        (["--baseline", "bpr"], "--baseline goes with --what baseline"),
        (["--what", "baseline", "--baseline", "popularity"], "bpr, sasrec, lightgcn"),
    ],
)
def test_tune_cli_checks_the_baseline_option(args: list[str], says: str) -> None:
    from typer.testing import CliRunner

    from genre.cli import app

    result = CliRunner().invoke(app, ["tune", *args])
    assert result.exit_code == 2 and says in " ".join(result.output.split()), result.output
