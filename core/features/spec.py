"""The feature spec: every stream rule that shapes what the ranker sees.

One frozen record, built from the ``streams`` config section, that the stream
agents, the scorer, the training replay and the evaluation all take their
rules from, and that the ranker's manifest records (``as_manifest``), so a
worker can tell when it would serve a model features it was not trained on
(``drift``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from genre.core.features.graph import GraphRules
from genre.core.features.users import USER_VECTOR_UPDATERS, UserStateRules

#: Per-candidate ranker features the scorer can compute, by name (``ranking.py``).
RANKER_FEATURES = ("trending", "co_click", "profile")
#: The feature a ranker trained with LLM profiles takes in addition.
PROFILE_FEATURE = "profile"


@dataclass(frozen=True)
class FeatureSpec:
    """Stream rules and ranker inputs (defaults = genre.yaml's ``streams`` section)."""

    history_size: int = 50
    max_seen: int = 2000
    dedup_window: int = 256
    co_click_window: int = 5
    #: Recent history items the co-click score is summed over (weights 1, 1/2, ...).
    co_click_recent: int = 10
    edge_half_life_s: float = 7 * 86400.0
    trending_half_life_s: float = 86400.0
    max_neighbours: int = 100
    click_weights: Mapping[str, float] = field(
        default_factory=lambda: {"click": 1.0, "view": 0.5, "rate": 1.0, "purchase": 3.0}
    )
    user_vector: str = "decayed_mean"
    user_vector_params: Mapping[str, Any] = field(default_factory=lambda: {"half_life_s": 86400.0})
    #: History items the ranker attends over (the last ``history_len`` of the history).
    history_len: int = 50
    #: Per-candidate features, in the order the ranker takes them (``RANKER_FEATURES``).
    feature_names: tuple[str, ...] = ("trending", "co_click")
    #: Extra popularity half-lives replayed for the popularity baseline's tuning
    #: (seconds; ``inf`` = all-time counts). Evaluation only; not a stream rule.
    popularity_half_lives: tuple[float, ...] = (3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)

    def __post_init__(self) -> None:
        unknown = [n for n in self.feature_names if n not in RANKER_FEATURES]
        if unknown:
            raise ValueError(
                f"unknown ranker features {unknown}; this GENRE computes {list(RANKER_FEATURES)}"
            )

    @classmethod
    def from_streams(cls, streams: Any, **overrides: Any) -> FeatureSpec:
        """The spec of a ``StreamsConfig`` (``config.streams``), with overrides."""
        values: dict[str, Any] = {
            "history_size": streams.history_size,
            "max_seen": streams.max_seen,
            "dedup_window": streams.dedup_window,
            "co_click_window": streams.co_click_window,
            "edge_half_life_s": streams.edge_half_life_s,
            "trending_half_life_s": streams.trending_half_life_s,
            "max_neighbours": streams.max_neighbours,
            "click_weights": dict(streams.click_weights),
            "user_vector": streams.user_vector.name,
            "user_vector_params": dict(streams.user_vector.params),
            "history_len": streams.history_size,
        }
        values.update(overrides)
        return cls(**values)

    def user_rules(self) -> UserStateRules:
        """The rules that fold clicks into user state."""
        return UserStateRules(
            history_size=self.history_size,
            max_seen=self.max_seen,
            dedup_window=self.dedup_window,
            co_click_window=self.co_click_window,
            click_weights=dict(self.click_weights),
            updater=USER_VECTOR_UPDATERS.create(self.user_vector, **dict(self.user_vector_params)),
        )

    def graph_rules(self) -> GraphRules:
        """The rules that fold co-clicks into the item graph."""
        return GraphRules(self.edge_half_life_s, self.trending_half_life_s, self.max_neighbours)

    def as_manifest(self) -> dict[str, Any]:
        """JSON-able form, as a ranker manifest records it (``feature_spec``)."""
        out = asdict(self)
        out["click_weights"] = dict(self.click_weights)
        out["user_vector_params"] = dict(self.user_vector_params)
        out["feature_names"] = list(self.feature_names)
        out["popularity_half_lives"] = list(self.popularity_half_lives)
        return out

    def drift(self, trained: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Stream rules that differ from those a model was trained with:
        name -> (trained value, this spec's value); a rule the manifest does not record
        counts as drift (None, value). Evaluation-only fields are ignored."""
        mine = self.as_manifest()
        out = {}
        for key in STREAM_RULES:
            if key not in trained or _normalise(trained[key]) != _normalise(mine[key]):
                out[key] = (trained.get(key), mine[key])
        return out


#: The fields that are stream rules (they change the features a model sees live).
STREAM_RULES = (
    "history_size",
    "max_seen",
    "dedup_window",
    "co_click_window",
    "co_click_recent",
    "edge_half_life_s",
    "trending_half_life_s",
    "max_neighbours",
    "click_weights",
    "user_vector",
    "user_vector_params",
    "history_len",
)


def _normalise(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in sorted(value.items())}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value
