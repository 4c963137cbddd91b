"""``genre tune --what baseline``: the learned baselines get a tuning budget of their own.

The comparison in ``genre evaluate`` is fair only when the baselines are tuned as
GENRE is. A study searches one baseline's constructor arguments
(``tune.baseline_space``): each trial fits the model on the TRAIN split exactly
as ``genre evaluate`` does (same seed, same thread count) and scores its best
epoch's NDCG@10 on the validation queries (``params["val_ndcg@10"]``, the figure
its early stopping selects on). The train + validation replay that builds those
queries runs once per study run and serves every trial; the search holds the
click log only up to the end of validation (``tune_blend.head``), so no test
click is read. Each epoch's figure goes to Optuna's median pruner.

After the search, the best arguments are written as ``{name: kwargs}`` JSON
(``<study>.best.json``, for ``genre evaluate --baseline-params``), and the test
split is read once: the default and the tuned model, fitted on the same
validation queries, ranked in one test replay.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from genre.core.config import GenreConfig
from genre.model_export.baselines import Baseline
from genre.model_export.pipeline import ClickLog, feature_spec, llm_inputs
from genre.model_export.replay import PROFILE_FEATURE, Interactions, ProfileTrack, QueryBatch
from genre.model_export.tune import baseline_defaults, baseline_space, suggest
from genre.model_export.tune_run import TuneOptions, _seconds, _trial_line, open_study, study_paths
from genre.model_export.zoo import BASELINES

__all__ = ["load_baseline_params", "run_tune_baseline", "tune_baseline"]


def run_tune_baseline(
    cfg: GenreConfig, log: ClickLog, opts: TuneOptions, *, out_dir: Path, console: Console
) -> dict[str, Any]:
    """Run (or resume) the study of ``opts.baseline`` on ``log`` (see ``tune_baseline``)."""
    from genre.model_export.replay import build_interactions

    baseline_space(opts.baseline or "", cfg.streams.history_size)  # unknown names fail first
    data = build_interactions(log.items, log.clicks)
    llm = llm_inputs(
        cfg, log, data, console, items=cfg.llm.items.enabled, profiles=cfg.llm.profiles.enabled
    )
    return tune_baseline(
        cfg, data, llm.vectors, llm.profiles, opts, out_dir=out_dir, console=console
    )


def tune_baseline(
    cfg: GenreConfig,
    data: Interactions,
    vectors: np.ndarray,
    profiles: ProfileTrack | None,
    opts: TuneOptions,
    *,
    out_dir: Path,
    console: Console,
) -> dict[str, Any]:
    """Run (or resume) the study of ``opts.baseline``; then the best arguments as JSON, the
    test figures of the default and the tuned model, and the report."""
    import optuna

    from genre.model_export.evaluate import _replay_train_valid, make_progress
    from genre.model_export.replay import VALID
    from genre.model_export.train import torch_threads
    from genre.model_export.tune_blend import head

    name = opts.baseline
    if name is None:
        raise ValueError("baseline mode needs the baseline's name (--baseline)")
    knobs = baseline_space(name, cfg.streams.history_size)  # unknown names fail here
    paths = study_paths(out_dir, opts.study, "baseline")
    study = open_study(paths["db"], opts)
    spec = _spec(cfg, profiles)
    valid_data, valid_profiles = head(data, profiles, VALID)
    end_valid = len(valid_data)
    threads, seed = cfg.ranker.train.threads, cfg.ranker.train.seed
    console.print(
        f"study {opts.study} (baseline {name}, {opts.sampler}, seed {opts.seed}) in "
        f"{paths['db']}: {len(study.trials)} trials so far; validation clicks only"
    )
    t0 = time.perf_counter()
    with torch_threads(threads), make_progress(console) as progress:
        valid = _replay_train_valid(
            valid_data, vectors, spec, None, end_valid, 3, progress, valid_profiles
        )
    console.print(
        f"validation queries: {len(valid)} (replayed once, {time.perf_counter() - t0:.0f} s)"
    )
    #: Fitted models of this run worth keeping for the test split: trial 0 and the best.
    fitted: dict[int, Baseline] = {}

    def objective(trial: Any) -> float:
        kwargs = suggest(trial, knobs)
        model = BASELINES[name](**kwargs, num_threads=threads)  # type: ignore[call-arg]

        def on_epoch(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: validation NDCG@10 {value:.4f}")

        model.on_epoch = on_epoch
        start = time.perf_counter()
        with torch_threads(threads), make_progress(console) as progress:
            model.fit(valid_data, valid, vectors, seed=seed, progress=progress)
        model.on_epoch = None
        value = float(model.params["val_ndcg@10"])
        trial.set_user_attr("best_epoch", model.params.get("best_epoch"))
        trial.set_user_attr("epochs_run", model.params.get("epochs_run"))
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        fitted[trial.number] = model
        return value

    def report(study: Any, trial: Any) -> None:
        console.print(_trial_line(study, trial))
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = study.best_trial.number if done else None
        for number in list(fitted):
            if number not in (0, best):
                del fitted[number]

    if not study.trials:
        study.enqueue_trial(baseline_defaults(name, knobs))  # trial 0: the defaults
    study.optimize(objective, n_trials=opts.trials, timeout=opts.timeout_s, callbacks=[report])
    return _finish(cfg, study, opts, (data, vectors, profiles), spec, valid, fitted, paths, console)


def _spec(cfg: GenreConfig, profiles: Any) -> Any:
    """The feature spec ``evaluate_models`` replays with (the profile feature added when
    there are profiles), so the validation queries are the ones ``genre evaluate`` fits on."""
    spec = feature_spec(cfg)
    if profiles is not None and PROFILE_FEATURE not in spec.feature_names:
        spec = replace(spec, feature_names=(*spec.feature_names, PROFILE_FEATURE))
    return spec


class _Renamed(Baseline):
    """A fitted baseline under another report name (the default and the tuned model are
    tested side by side in one replay, which keys its figures by name)."""

    def __init__(self, model: Baseline) -> None:
        super().__init__()
        self.model = model
        self.params = model.params

    def score(self, batch: QueryBatch) -> Any:
        return self.model.score(batch)


class _Default(_Renamed):
    name = "default"


class _Tuned(_Renamed):
    name = "tuned"


def _finish(
    cfg: GenreConfig,
    study: Any,
    opts: TuneOptions,
    inputs: tuple[Interactions, np.ndarray, ProfileTrack | None],
    spec: Any,
    valid: QueryBatch,
    fitted: dict[int, Baseline],
    paths: dict[str, Path],
    console: Console,
) -> dict[str, Any]:
    """The best arguments as JSON, the test figures (read once, here) and the report."""
    import optuna

    from genre.model_export.tune_report import write_report

    name = opts.baseline
    assert name is not None
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ValueError(f"study {opts.study!r} has no completed trial; run more trials")
    best = study.best_trial
    paths["params"].write_text(json.dumps({name: best.params}, indent=2) + "\n")
    base_trial = next((t for t in done if t.number == 0), None)
    with console.status("test split: default and tuned model (read once, after the search)"):
        test = _figures_on_test(cfg, name, best, fitted, inputs, spec, valid)
    summary: dict[str, Any] = {
        "study": opts.study,
        "mode": "baseline",
        "baseline": name,
        "sampler": opts.sampler,
        "seed": opts.seed,
        "trials": sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials),
        "completed": len(done),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "seconds_per_trial": _seconds(done),
        "best": {"number": best.number, "valid_ndcg@10": best.value, "params": best.params},
        "base_valid_ndcg@10": None if base_trial is None else base_trial.value,
        "params": {name: best.params},
        "test": test,
        "files": {k: str(v) for k, v in paths.items()},
    }
    write_report(study, summary, paths)
    return summary


def _figures_on_test(
    cfg: GenreConfig,
    name: str,
    best: Any,
    fitted: dict[int, Baseline],
    inputs: tuple[Interactions, np.ndarray, ProfileTrack | None],
    spec: Any,
    valid: QueryBatch,
) -> dict[str, dict[str, Any]]:
    """Test-split metrics of the default and the tuned model, in one test replay. Models
    this run fitted are reused; others (a resumed study's) are fitted again, as trials
    were: same seed, same validation queries, so the same weights."""
    from genre.model_export.evaluate import _replay_test, make_progress
    from genre.model_export.train import torch_threads

    data, vectors, profiles = inputs
    threads, seed = cfg.ranker.train.threads, cfg.ranker.train.seed
    knobs = baseline_space(name, cfg.streams.history_size)
    wanted = {0: baseline_defaults(name, knobs), best.number: best.params}
    with torch_threads(threads), make_progress() as progress:
        models: dict[int, Baseline] = {}
        for number, kwargs in wanted.items():
            model = fitted.get(number)
            if model is None:
                model = BASELINES[name](**kwargs, num_threads=threads)  # type: ignore[call-arg]
                model.fit(data, valid, vectors, seed=seed, progress=progress)
            models[number] = model
        tested = _replay_test(
            data,
            vectors,
            spec,
            [_Default(models[0]), _Tuned(models[best.number])],
            256,
            progress,
            profiles,
        )
    return tested.models


def load_baseline_params(files: list[Path]) -> dict[str, dict[str, Any]]:
    """``{name: kwargs}`` merged from JSON files (``genre tune --what baseline``'s
    ``<study>.best.json``), later files winning per argument; names are checked against
    the registry, arguments against each constructor."""
    import inspect

    merged: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read baseline parameters: {exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise ValueError(f"{path}: expected a JSON object {{name: {{argument: value}}}}")
        for name, kwargs in loaded.items():
            if name not in BASELINES:
                raise ValueError(f"{path}: unknown baseline {name!r}; use {sorted(BASELINES)}")
            accepted = inspect.signature(BASELINES[name].__init__).parameters
            stray = sorted(set(kwargs) - set(accepted) - {"self"})
            if stray:
                raise ValueError(f"{path}: {name} takes no argument(s) {stray}")
            merged.setdefault(name, {}).update(kwargs)
    return merged
