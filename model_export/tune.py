"""``genre tune``: the search space, in one place, and how a trial becomes a config overlay.

A knob is a dotted config key (``scorer.candidates.co_click.weight`` names the
list entry by its ``name``) with its range. ``search_space`` lists the knobs of
one mode:

* ``blend``: what the blend-served path reads, evaluated by the replay without
  training: per-source weights and limits, the stream's half-lives, the diversity
  step.
* ``ranker``: the ranker's training hyper-parameters, the history length it
  attends over and the half-lives of its features; each trial trains the ranker.
  ``ranker.rank_candidates`` is not searched: the validation figure ranks every
  item, so it cannot see the pre-ranking cut.

``trial_config`` turns a trial's parameters into a validated ``GenreConfig``;
``overlay_of`` writes only the keys that differ from the base config (a changed
list, such as ``scorer.candidates``, is written whole: overlays replace lists).

``baseline`` mode tunes a learned baseline of ``genre evaluate`` instead of the
config: ``baseline_space`` holds its knobs, keyed by constructor argument (the
best trial becomes ``{name: kwargs}`` JSON, which ``genre evaluate
--baseline-params`` passes to the constructor), ``baseline_defaults`` the
constructor's own values (trial 0). Popularity picks its half-life on
validation by itself, and item-kNN and transitions have nothing to learn.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from genre.core.config import GenreConfig

Mode = Literal["blend", "ranker", "baseline"]
#: The modes whose trials are config overlays (``search_space``).
MODES: tuple[Mode, ...] = ("blend", "ranker")

DAY = 86400.0
#: Half-lives are choices, not ranges: the replay's state depends on them only, so
#: trials that share them share one replay (``tune_blend.ValidationCache``).
HALF_LIVES_EDGE = (DAY, 7 * DAY, 30 * DAY)
HALF_LIVES_TRENDING = (6 * 3600.0, DAY, 7 * DAY)
HALF_LIVES_USER = (6 * 3600.0, DAY, 7 * DAY)
HISTORY_SIZES = (20, 50, 100)


@dataclass(frozen=True)
class Knob:
    """One tuned key: a float or int range, or a list of choices."""

    key: str
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    #: Sampled only when this knob (a bool choice) is True in the same trial.
    when: str | None = None

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this knob's value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=self.step or 1)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def admits(self, value: Any) -> bool:
        """Whether ``value`` lies in this knob's space (the defaults must, to be enqueued)."""
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "int" and (value - self.low) % (self.step or 1):
            return False
        return self.low <= value <= self.high


def search_space(cfg: GenreConfig, mode: Mode) -> list[Knob]:
    """The knobs of ``mode`` for this config (its candidate sources, its defaults inside)."""
    if mode == "baseline":
        raise ValueError("baseline mode tunes constructor arguments: use baseline_space(name)")
    if mode not in MODES:
        raise ValueError(f"unknown tuning mode {mode!r}; use one of {list(MODES)}")
    s = cfg.streams
    knobs = [
        _choice("streams.edge_half_life_s", HALF_LIVES_EDGE, s.edge_half_life_s),
        _choice("streams.trending_half_life_s", HALF_LIVES_TRENDING, s.trending_half_life_s),
    ]
    if mode == "blend":
        user_hl = float(s.user_vector.params.get("half_life_s", DAY))
        knobs.append(_choice("streams.user_vector.params.half_life_s", HALF_LIVES_USER, user_hl))
        for source in cfg.scorer.candidates:
            base = f"scorer.candidates.{source.name}"
            knobs.append(Knob(f"{base}.weight", "float", 0.0, max(2.0, source.weight)))
            high = max(300, source.limit)
            knobs.append(Knob(f"{base}.limit", "int", 10, high, step=10))
        d = cfg.scorer.diversity
        knobs += [
            Knob("scorer.diversity.enabled", "choice", choices=(False, True)),
            Knob("scorer.diversity.mmr_lambda", "float", 0.5, 1.0, when="scorer.diversity.enabled"),
            Knob(
                "scorer.diversity.popularity_weight",
                "float",
                0.0,
                max(0.5, d.popularity_weight),
                when="scorer.diversity.enabled",
            ),
        ]
    else:
        t = cfg.ranker.train
        knobs += [
            # The history the ranker attends over; the blend's sources read the last
            # few items (co_click) or the seen set only, so blend mode leaves it.
            _choice("streams.history_size", HISTORY_SIZES, s.history_size),
            _choice("ranker.train.dim", (32, 64, 128), t.dim),
            Knob("ranker.train.lr", "float", min(3e-4, t.lr), max(3e-3, t.lr), log=True),
            _choice("ranker.train.negatives", (32, 64, 128), t.negatives),
            Knob("ranker.train.epochs", "int", min(4, t.epochs), max(16, t.epochs)),
            Knob("ranker.train.dropout", "float", 0.0, max(0.3, t.dropout)),
            Knob("ranker.train.id_dropout", "float", 0.0, max(0.3, t.id_dropout)),
        ]
    return knobs


def baseline_space(name: str, history_size: int | None = None) -> list[Knob]:
    """The knobs of baseline ``name`` (``TUNABLE_BASELINES``), keyed by constructor argument.

    Dimensions, depth and ``max_len`` are choices (each is a different model size); the
    learning rate and L2 weights are log ranges, dropout a linear one. Every range holds
    the constructor's default, so trial 0 is the baseline as ``genre evaluate`` fits it.
    ``history_size``: the replay's history length (``streams.history_size``); SASRec
    scores from at most that many items, so longer ``max_len`` choices are left out.
    """
    if name not in BASELINE_SPACES:
        raise ValueError(
            f"baseline {name!r} has no search space; tune one of {sorted(BASELINE_SPACES)}"
        )
    knobs = list(BASELINE_SPACES[name])
    if history_size is not None:
        knobs = [
            replace(k, choices=tuple(c for c in k.choices if c <= history_size))
            if k.key == "max_len"
            else k
            for k in knobs
        ]
    return knobs


def baseline_defaults(name: str, knobs: Sequence[Knob]) -> dict[str, Any]:
    """The constructor's defaults of ``knobs``: the trial enqueued first (the baseline)."""
    from genre.model_export.zoo import BASELINES

    signature = inspect.signature(BASELINES[name].__init__)
    out: dict[str, Any] = {}
    for knob in knobs:
        value = signature.parameters[knob.key].default
        if not knob.admits(value):
            raise ValueError(f"{name}.{knob.key} = {value!r} lies outside its search space {knob}")
        out[knob.key] = value
    return out


BASELINE_SPACES: dict[str, tuple[Knob, ...]] = {
    "bpr": (
        Knob("dim", "choice", choices=(32, 64, 128, 256)),
        Knob("lr", "float", 1e-3, 3e-2, log=True),
        Knob("reg", "float", 1e-6, 1e-2, log=True),
    ),
    "sasrec": (
        Knob("hidden", "choice", choices=(32, 64, 128)),
        Knob("blocks", "choice", choices=(1, 2, 3)),
        Knob("heads", "choice", choices=(1, 2)),
        Knob("dropout", "float", 0.0, 0.5),
        Knob("lr", "float", 2e-4, 5e-3, log=True),
        Knob("max_len", "choice", choices=(10, 20, 30, 50, 100, 200)),
        Knob("negatives", "choice", choices=(50, 100, 200, 400)),
    ),
    "lightgcn": (
        Knob("dim", "choice", choices=(32, 64, 128)),
        Knob("layers", "int", 1, 4),
        Knob("lr", "float", 1e-3, 2e-2, log=True),
        Knob("reg", "float", 1e-6, 1e-2, log=True),
        Knob("user_mode", "choice", choices=("embedding", "history", "both")),
    ),
}
#: The baselines ``genre tune --what baseline`` can tune.
TUNABLE_BASELINES: tuple[str, ...] = tuple(BASELINE_SPACES)


def _choice(key: str, choices: Sequence[Any], default: Any) -> Knob:
    """A choice knob whose choices hold the config's own value."""
    values = tuple(choices) if default in choices else (*choices, default)
    return Knob(key, "choice", choices=tuple(sorted(values)))


def suggest(trial: Any, knobs: Sequence[Knob]) -> dict[str, Any]:
    """Sample every knob (conditional ones only when their switch is on)."""
    params: dict[str, Any] = {}
    for knob in knobs:
        if knob.when is None or params.get(knob.when):
            params[knob.key] = knob.suggest(trial)
    return params


def defaults(cfg: GenreConfig, knobs: Sequence[Knob]) -> dict[str, Any]:
    """The config's own values of ``knobs``: the trial enqueued first (the baseline)."""
    tree = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for knob in knobs:
        if knob.when is not None and not out.get(knob.when):
            continue
        value = get_path(tree, knob.key)
        if not knob.admits(value):
            raise ValueError(f"{knob.key} = {value!r} lies outside its search space {knob}")
        out[knob.key] = value
    return out


def trial_config(base: GenreConfig, params: Mapping[str, Any]) -> GenreConfig:
    """``base`` with a trial's parameters applied, validated."""
    tree = base.model_dump(mode="json")
    for key, value in params.items():
        set_path(tree, key, value)
    cfg = GenreConfig.model_validate(tree)
    cfg._source, cfg._base_dir = base.source, base._base_dir
    return cfg


def overlay_of(base: GenreConfig, tuned: GenreConfig) -> dict[str, Any]:
    """Only the keys of ``tuned`` that differ from ``base`` (lists whole)."""
    return _diff(base.model_dump(mode="json"), tuned.model_dump(mode="json"))


def _diff(old: Any, new: Any) -> Any:
    out = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = _diff(before, value)
            if inner:
                out[key] = inner
        elif value != before:
            out[key] = value
    return out


def _step(node: Any, part: str) -> tuple[Any, Any]:
    """(container, key) of ``part`` in ``node``: a list of named entries is indexed by name."""
    if isinstance(node, list):
        for i, entry in enumerate(node):
            if isinstance(entry, dict) and entry.get("name") == part:
                return node, i
        raise KeyError(f"no entry named {part!r} in the list")
    if not isinstance(node, dict):
        raise KeyError(f"{part!r}: not a section")
    return node, part


def get_path(tree: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key of a config dump."""
    node: Any = tree
    for part in key.split("."):
        container, k = _step(node, part)
        node = container[k]
    return copy.deepcopy(node)


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key of a config dump (its sections must exist)."""
    parts = key.split(".")
    node: Any = tree
    for part in parts[:-1]:
        container, k = _step(node, part)
        node = container[k]
    container, k = _step(node, parts[-1])
    if isinstance(container, dict) and k not in container:
        raise KeyError(f"{key}: no such config key")
    container[k] = value
