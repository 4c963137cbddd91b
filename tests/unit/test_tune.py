"""genre tune (issue 20): the search space, overlays, the test split kept out, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("optuna")

import optuna

from genre.core.config import ConfigError, GenreConfig, load_config
from genre.core.features.candidates import source_specs
from genre.model_export.evaluate import BLEND, evaluate_models
from genre.model_export.replay import TEST, VALID, CandidatePlan, build_interactions
from genre.model_export.tune import (
    defaults,
    overlay_of,
    search_space,
    suggest,
    trial_config,
)
from genre.model_export.tune_blend import BlendEvaluator, head
from genre.model_export.tune_run import TuneOptions, open_study
from genre.schemas import ClickEvent, ItemUpsert


def _log(n_users: int = 30, n_items: int = 40, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    items = [ItemUpsert(item_id=f"i{i}", title=f"item {i}") for i in range(n_items)]
    clicks = []
    t = 1_700_000_000.0
    for k in range(600):
        u = int(rng.integers(n_users))
        i = int(min(rng.zipf(1.5) - 1, n_items - 1)) if k % 2 else int(rng.integers(n_items))
        t += float(rng.integers(60, 3600))
        clicks.append(ClickEvent(event_id=f"e{k}", user_id=f"u{u}", item_id=f"i{i}", ts=t))
    return items, clicks


def _vectors(n: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _base() -> GenreConfig:
    data = GenreConfig().model_dump(mode="json")
    data["scorer"]["candidates"] = [
        c for c in data["scorer"]["candidates"] if c["name"] != "profile"
    ]
    return GenreConfig.model_validate(data)


@pytest.mark.parametrize("mode", ["blend", "ranker"])
def test_trial_params_make_a_valid_overlay_that_round_trips(mode: str, tmp_path: Path) -> None:
    base = _base()
    knobs = search_space(base, mode)  # type: ignore[arg-type]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        trial = study.ask()
        params = suggest(trial, knobs)
        tuned = trial_config(base, params)
        overlay = overlay_of(base, tuned)
        assert set(overlay) <= {"streams", "scorer", "ranker"}
        base_file = tmp_path / "genre.yaml"
        base_file.write_text(yaml.safe_dump(base.model_dump(mode="json")))
        over = tmp_path / "best.yaml"
        over.write_text(yaml.safe_dump(overlay))
        loaded = load_config(base_file, overlays=[over], environ={})
        assert loaded.model_dump() == tuned.model_dump()
        study.tell(trial, 0.0)


def test_defaults_are_trial_zero_and_give_an_empty_overlay() -> None:
    base = _base()
    for mode in ("blend", "ranker"):
        knobs = search_space(base, mode)  # type: ignore[arg-type]
        params = defaults(base, knobs)
        assert overlay_of(base, trial_config(base, params)) == {}
    assert "ranker.rank_candidates" not in {k.key for k in search_space(base, "blend")}


def test_overlay_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(overlays=[tmp_path / "missing.yaml"], environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(overlays=[bad], environ={})
    typo = tmp_path / "typo.yaml"
    typo.write_text("scorer: {top_kk: 3}\n")
    with pytest.raises(ConfigError, match="top_kk"):
        load_config(overlays=[typo], environ={})


def test_the_search_never_holds_a_test_click() -> None:
    items, clicks = _log()
    data = build_interactions(items, clicks)
    vectors = _vectors(data.n_items)
    valid, _ = head(data, None, VALID)
    assert (data.split == TEST).any() and not (valid.split == TEST).any()
    with pytest.raises(ValueError, match="test clicks"):
        BlendEvaluator(data, vectors, None, VALID, {})
    # Changing every test click leaves the objective exactly as it was.
    rng = np.random.default_rng(5)
    changed = [
        c.model_copy(update={"item_id": f"i{int(rng.integers(40))}"}) if k >= 540 else c
        for k, c in enumerate(sorted(clicks, key=lambda c: c.ts))
    ]
    other = build_interactions(items, changed)
    assert (other.items[other.split == TEST] != data.items[data.split == TEST]).any()
    base = _base()
    a = BlendEvaluator(valid, vectors, None, VALID, {}).evaluate(base)
    b = BlendEvaluator(head(other, None, VALID)[0], vectors, None, VALID, {}).evaluate(base)
    assert a["ndcg@10"] == b["ndcg@10"] and a["queries"] == b["queries"]


def test_blend_evaluation_equals_genre_evaluates_blend_row() -> None:
    items, clicks = _log()
    data = build_interactions(items, clicks)
    vectors = _vectors(data.n_items)
    base = trial_config(
        _base(),
        {"scorer.candidates.co_click.limit": 20, "scorer.candidates.trending.limit": 10},
    )
    report = evaluate_models(
        data,
        vectors,
        dataset="t",
        baselines=["popularity"],
        include_genre=False,
        plan=CandidatePlan(source_specs(base.scorer), base.ranker.rank_candidates),
    )
    ours = BlendEvaluator(data, vectors, None, TEST, {"co_click": 300, "trending": 300, "ann": 300})
    got = ours.evaluate(base)
    for key in ("hr@10", "ndcg@10", "mrr", "coverage@10", "queries"):
        assert got[key] == report.models[BLEND][key], key
    again = ours.evaluate(base)
    assert again["cached"] and again["ndcg@10"] == got["ndcg@10"]


def test_a_resumed_study_continues_the_numbering(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    opts = TuneOptions(mode="blend", study="s", sampler="random")
    first = open_study(db, opts)
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = open_study(db, opts)
    again.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert [t.number for t in again.trials] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="tunes 'blend'"):
        open_study(db, TuneOptions(mode="ranker", study="s"))


def test_a_trial_left_running_by_a_killed_run_is_failed_on_resume(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    opts = TuneOptions(mode="blend", study="k")
    study = open_study(db, opts)
    study.ask()  # never told: as if the process died mid-trial
    again = open_study(db, opts)
    assert [t.state for t in again.trials] == [optuna.trial.TrialState.FAIL]
