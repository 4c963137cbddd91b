"""``genre tune``: an Optuna study over the search space of ``tune.py``, kept in SQLite.

The objective is NDCG@10 on the temporal validation split; the search holds the
click log only up to the end of validation (``tune_blend.head``), so no test click
is ever read during it. Trial 0 of a new study is the base config itself. After
the search, the best trial becomes a YAML overlay, and the test split is read
once, for the base and the tuned config, by the same evaluation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from genre.core.config import GenreConfig
from genre.model_export.pipeline import ClickLog, feature_spec, llm_inputs
from genre.model_export.tune import Mode, defaults, overlay_of, search_space, suggest, trial_config
from genre.model_export.tune_blend import BlendEvaluator, head

SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class TuneOptions:
    """What one ``genre tune`` run does."""

    mode: Mode = "blend"
    trials: int = 20
    timeout_s: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    study: str = "genre"
    #: blend: trials that share each new replay: after a trial replays a new stream
    #: spec, ``reuse - 1`` trials with the same stream rules are queued (the sampler
    #: picks the rest), each scored from the cached replay in seconds.
    reuse: int = 1
    #: baseline mode: which one (``tune.TUNABLE_BASELINES``).
    baseline: str | None = None

    @property
    def label(self) -> str:
        """What the study tunes, as kept in its ``mode`` attribute: ``blend``, ``ranker``
        or ``baseline:<name>``."""
        return self.mode if self.mode != "baseline" else f"baseline:{self.baseline}"


def _hint(label: str) -> str:
    """The CLI options that tune ``label`` (a study's ``mode`` attribute)."""
    if label.startswith("baseline:"):
        return f"--what baseline --baseline {label.split(':', 1)[1]}"
    return f"--what {label}"


def study_paths(out_dir: Path, study: str, mode: Mode = "blend") -> dict[str, Path]:
    """Where a study keeps its database, result (a YAML overlay, or for a baseline its
    constructor arguments as JSON) and report."""
    best = "params" if mode == "baseline" else "overlay"
    suffix = "json" if mode == "baseline" else "yaml"
    return {
        "db": out_dir / f"{study}.db",
        best: out_dir / f"{study}.best.{suffix}",
        "json": out_dir / f"{study}.report.json",
        "markdown": out_dir / f"{study}.report.md",
        "history": out_dir / f"{study}.history.png",
        "importance": out_dir / f"{study}.importance.png",
    }


def open_study(path: Path, opts: TuneOptions) -> Any:
    """Create or resume the study in the SQLite file ``path``."""
    import optuna

    if opts.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {opts.sampler!r}; use one of {list(SAMPLERS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if opts.mode == "baseline" and opts.baseline is None:
        raise ValueError("baseline mode needs the baseline's name")
    # A baseline's validation figure climbs for several epochs: prune from epoch 5 on.
    warmup = 5 if opts.mode == "baseline" else 1
    startup = 3 if opts.mode == "baseline" else 2
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=opts.study,
        storage=f"sqlite:///{path}",
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Left running by a run that was killed (one process per study file): failed.
        study._storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
    # A resumed study draws on from seed + trials so far, not the first run's draws again.
    seed = opts.seed + len(study.trials)
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed)
        if opts.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    mode = study.user_attrs.get("mode")
    if mode is None:
        study.set_user_attr("mode", opts.label)
    elif mode != opts.label:
        raise ValueError(
            f"study {opts.study!r} in {path} tunes {mode!r}, not {opts.label!r}; "
            f"pass {_hint(mode)} or another --study name"
        )
    return study


def run_tune(
    cfg: GenreConfig, log: ClickLog, opts: TuneOptions, *, out_dir: Path, console: Console
) -> dict[str, Any]:
    """Run (or resume) the study, then write the overlay, the test figures and the report."""
    from genre.model_export.replay import VALID, build_interactions

    if opts.mode == "baseline":
        from genre.model_export.tune_baselines import run_tune_baseline

        return run_tune_baseline(cfg, log, opts, out_dir=out_dir, console=console)

    paths = study_paths(out_dir, opts.study)
    study = open_study(paths["db"], opts)
    knobs = search_space(cfg, opts.mode)
    data = build_interactions(log.items, log.clicks)
    llm = llm_inputs(
        cfg, log, data, console, items=cfg.llm.items.enabled, profiles=cfg.llm.profiles.enabled
    )
    valid_data, valid_profiles = head(data, llm.profiles, VALID)
    widest = {k.key.split(".")[2]: int(k.high) for k in knobs if k.key.endswith(".limit")}
    if opts.mode == "blend":
        evaluator = BlendEvaluator(valid_data, llm.vectors, valid_profiles, VALID, widest)

        def score(trial: Any, tuned: GenreConfig) -> dict[str, Any]:
            return evaluator.evaluate(tuned)
    else:

        def score(trial: Any, tuned: GenreConfig) -> dict[str, Any]:
            return ranker_validation(tuned, valid_data, llm.vectors, valid_profiles, trial)

    def objective(trial: Any) -> float:
        tuned = trial_config(cfg, suggest(trial, knobs))
        result = score(trial, tuned)
        for key, value in result.items():
            trial.set_user_attr(key, value)
        return float(result["ndcg@10"])

    def report(study: Any, trial: Any) -> None:
        console.print(_trial_line(study, trial))
        if opts.mode == "blend" and trial.user_attrs.get("cached") is False:
            stream = {k: v for k, v in trial.params.items() if k.startswith("streams.")}
            for _ in range(opts.reuse - 1):
                study.enqueue_trial(stream)

    console.print(
        f"study {opts.study} ({opts.mode}, {opts.sampler}, seed {opts.seed}) in {paths['db']}: "
        f"{len(study.trials)} trials so far; validation clicks only"
    )
    if not study.trials:
        study.enqueue_trial(defaults(cfg, knobs))  # trial 0: the config as it is
    study.optimize(objective, n_trials=opts.trials, timeout=opts.timeout_s, callbacks=[report])
    return finish(cfg, study, opts, data, llm, paths, console, log)


def _trial_line(study: Any, trial: Any) -> str:
    """One rich line per finished trial: its value, the best so far, its time."""
    import optuna

    secs = trial.duration.total_seconds() if trial.duration else 0.0
    if trial.state != optuna.trial.TrialState.COMPLETE:
        state = trial.state.name.lower()
        return f"trial {trial.number:>3}  [yellow]{state}[/yellow]  {secs:6.1f} s"
    best = study.best_trial
    hit = " (cached replay)" if trial.user_attrs.get("cached") else ""
    if trial.user_attrs.get("best_epoch") is not None:
        hit += f"  best epoch {trial.user_attrs['best_epoch']}"
    mark = "[green]*[/green]" if best.number == trial.number else " "
    return (
        f"trial {trial.number:>3}{mark} ndcg@10 {trial.value:.4f}  "
        f"best {best.value:.4f} (#{best.number})  {secs:6.1f} s{hit}"
    )


def ranker_validation(
    cfg: GenreConfig, data: Any, vectors: np.ndarray, profiles: Any, trial: Any = None
) -> dict[str, Any]:
    """Train the ranker with ``cfg`` on ``data`` (train + valid only); its best validation
    NDCG@10 (full ranking, every third validation click, as early stopping sees it).
    Each epoch's figure goes to ``trial`` for pruning."""
    from genre.model_export.evaluate import GenreModel, _replay_train_valid, make_progress
    from genre.model_export.replay import PROFILE_FEATURE
    from genre.model_export.train import torch_threads, train_ranker

    spec = feature_spec(cfg)
    if profiles is not None and PROFILE_FEATURE not in spec.feature_names:
        spec = replace(spec, feature_names=(*spec.feature_names, PROFILE_FEATURE))
    settings = cfg.ranker.train
    genre = GenreModel(settings, spec)

    def on_epoch(epoch: int, value: float) -> None:
        if trial is None:
            return
        import optuna

        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: validation NDCG@10 {value:.4f}")

    start = time.perf_counter()
    with torch_threads(settings.threads), make_progress() as progress:
        valid = _replay_train_valid(data, vectors, spec, genre, len(data), 3, progress, profiles)
        assert genre.sampler is not None
        result = train_ranker(
            data, vectors, genre.sampler.build(), valid, spec, settings, progress, on_epoch
        )
    best = max(h["valid_ndcg@10"] for h in result.history)
    return {
        "ndcg@10": round(best, 4),
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - start, 1),
    }


def finish(
    cfg: GenreConfig,
    study: Any,
    opts: TuneOptions,
    data: Any,
    llm: Any,
    paths: dict[str, Path],
    console: Console,
    log: ClickLog,
) -> dict[str, Any]:
    """Overlay, test figures (read once, here) and the report of the study's best trial."""
    import optuna

    from genre.model_export.tune_report import write_report

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ValueError(f"study {opts.study!r} has no completed trial; run more trials")
    best = study.best_trial
    tuned = trial_config(cfg, best.params)
    overlay = overlay_of(cfg, tuned)
    paths["overlay"].write_text(
        f"# genre tune: study {opts.study} ({opts.mode}), trial {best.number}, validation "
        f"NDCG@10 {best.value:.4f}\n# use: genre train|evaluate|worker --overlay "
        f"{paths['overlay'].name}\n" + yaml.safe_dump(overlay, sort_keys=False)
    )
    base_trial = next((t for t in done if t.number == 0), None)
    with console.status("test split: base and tuned config (read once, after the search)"):
        test = figures_on_test(cfg, tuned, opts.mode, data, llm, console, log)
    summary: dict[str, Any] = {
        "study": opts.study,
        "mode": opts.mode,
        "sampler": opts.sampler,
        "seed": opts.seed,
        "trials": sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials),
        "completed": len(done),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "seconds_per_trial": _seconds(done),
        "best": {"number": best.number, "valid_ndcg@10": best.value, "params": best.params},
        "base_valid_ndcg@10": None if base_trial is None else base_trial.value,
        "overlay": overlay,
        "test": test,
        "files": {k: str(v) for k, v in paths.items()},
    }
    write_report(study, summary, paths)
    return summary


def _seconds(trials: list[Any]) -> dict[str, float]:
    secs = np.asarray([t.duration.total_seconds() for t in trials if t.duration])
    cached = np.asarray([bool(t.user_attrs.get("cached")) for t in trials if t.duration])
    out = {"median": round(float(np.median(secs)), 2), "mean": round(float(secs.mean()), 2)}
    if cached.any():
        out["median_cached_replay"] = round(float(np.median(secs[cached])), 2)
    if (~cached).any():
        out["median_new_replay"] = round(float(np.median(secs[~cached])), 2)
    return out


def figures_on_test(
    base: GenreConfig,
    tuned: GenreConfig,
    mode: Mode,
    data: Any,
    llm: Any,
    console: Console,
    log: ClickLog,
) -> dict[str, dict[str, Any]]:
    """Test-split metrics of the base and the tuned config: the blend as served (its
    diversity step included) for ``blend``; GENRE trained and tested by ``genre train``'s
    evaluation for ``ranker``."""
    from genre.model_export.replay import TEST

    if mode == "blend":
        evaluator = BlendEvaluator(data, llm.vectors, llm.profiles, TEST, {}, cache_size=2)
        return {"base": evaluator.evaluate(base), "tuned": evaluator.evaluate(tuned)}
    from genre.model_export.pipeline import fit_genre

    out = {}
    for name, c in (("base", base), ("tuned", tuned)):
        report, _ = fit_genre(c, log, data, llm, console, epochs=None, save=False)
        out[name] = report.models["genre"]
    return out


def overlay_text(path: Path) -> str:
    """The overlay file's text (for the CLI's last line)."""
    return json.dumps(yaml.safe_load(path.read_text()))
