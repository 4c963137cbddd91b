"""The ranker's per-candidate features, computed one way for serving, training and evaluation.

``candidate_features`` is what the scorer worker feeds the ONNX ranker and what
the training replay and the evaluation compute for every sampled or ranked
item: the trending score, the co-click score from the user's recent history,
and the match of the user's LLM profile with the item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from genre.core.features.decay import decayed
from genre.core.features.graph import GraphRules, ItemState, NeighbourScores
from genre.core.features.ids import ITEM_IDS
from genre.core.features.spec import PROFILE_FEATURE, FeatureSpec


def profile_match(candidate_vectors: np.ndarray, profile: np.ndarray | None) -> np.ndarray:
    """max(0, cos(profile, item)) per row of unit ``candidate_vectors`` [C, D]; zeros
    without a profile."""
    if profile is None or not len(candidate_vectors):
        return np.zeros(len(candidate_vectors), np.float32)
    return np.maximum(candidate_vectors @ np.asarray(profile, np.float32), 0.0).astype(np.float32)


def co_click_scores(
    spec: FeatureSpec,
    rules: GraphRules,
    state_of: Callable[[str], ItemState | None],
    history: Sequence[str],
    now: float,
) -> NeighbourScores:
    """Co-click scores from the last ``spec.co_click_recent`` history items."""
    return rules.neighbour_scores(state_of, history[-spec.co_click_recent :], now)


def trending_scores(
    rules: GraphRules,
    state_of: Callable[[str], ItemState | None],
    candidates: Sequence[str],
    now: float,
    cache: dict[str, float] | None = None,
) -> np.ndarray:
    """Float32 [len(candidates)]: each candidate's popularity decayed to ``now``
    (``GraphRules.popularity`` for many items at once; 0 for items without clicks).
    ``cache`` (item -> score at ``now``), shared by the users of a batch, saves the
    state reads of items already scored."""
    if cache is None:
        cache = {}
    missing = [c for c in candidates if c not in cache]
    if missing:
        states = [state_of(c) for c in missing]
        pops = np.asarray([0.0 if s is None or s.pop_ts is None else s.pop for s in states])
        last = np.asarray([now if s is None or s.pop_ts is None else s.pop_ts for s in states])
        values = decayed(pops, last, now, rules.trending_half_life_s)
        cache.update(zip(missing, values.tolist(), strict=True))
    return np.asarray([cache[c] for c in candidates], np.float32)


def candidate_features(
    spec: FeatureSpec,
    rules: GraphRules,
    state_of: Callable[[str], ItemState | None],
    candidates: Sequence[str],
    now: float,
    *,
    history: Sequence[str] = (),
    co_scores: NeighbourScores | None = None,
    candidate_vectors: np.ndarray | None = None,
    profile: np.ndarray | None = None,
    popularity: dict[str, float] | None = None,
) -> np.ndarray:
    """Float32 [len(candidates), F]: ``spec.feature_names`` in order, raw values.

    ``co_scores`` may be passed when already computed for this user and ``now``
    (``co_click_scores``), else they are computed from ``history``.
    ``candidate_vectors`` (unit text vectors, one row per candidate) are needed
    for the profile feature only. ``popularity`` is an optional cache shared by
    the users of a batch (item -> trending score at ``now``).
    """
    columns: list[np.ndarray] = []
    for name in spec.feature_names:
        if name == "trending":
            columns.append(trending_scores(rules, state_of, candidates, now, popularity))
        elif name == "co_click":
            if co_scores is None:
                co_scores = co_click_scores(spec, rules, state_of, history, now)
            columns.append(co_scores.lookup(ITEM_IDS.rows(candidates)).astype(np.float32))
        elif name == PROFILE_FEATURE:
            if candidate_vectors is None:
                raise ValueError("the profile feature needs the candidates' text vectors")
            columns.append(profile_match(candidate_vectors, profile))
    if not columns:
        return np.zeros((len(candidates), 0), np.float32)
    return np.stack(columns, axis=-1)
