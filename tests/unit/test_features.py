"""streams/state.py: user-state rules, user-vector updaters, the co-click graph."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from genre.core.registry import UnknownComponentError
from genre.schemas import ClickEvent
from genre.streams.state import (
    USER_VECTOR_UPDATERS,
    DecayedMean,
    GraphRules,
    LastItem,
    UserStateRules,
    decay,
    encode_vector,
    finish_user_state,
    neighbour_scores,
    new_item_state,
    new_user_state,
    user_vector,
)

T0 = 1_700_000_000.0
_ids = itertools.count()


def _event(
    item: str, ts: float = T0, type: str = "click", event_id: str | None = None
) -> ClickEvent:
    return ClickEvent(
        event_id=event_id or f"e{next(_ids)}", user_id="u", item_id=item, type=type, ts=ts
    )


def _rules(**over: object) -> UserStateRules:
    params: dict = {
        "history_size": 3,
        "max_seen": 4,
        "dedup_window": 2,
        "co_click_window": 2,
        "click_weights": {"click": 1.0, "view": 0.5},
        "updater": DecayedMean(half_life_s=100.0),
    }
    params.update(over)
    return UserStateRules(**params)  # type: ignore[arg-type]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------
# UserStateRules
# ---------------------------------------------------------------------------


def test_decay() -> None:
    assert decay(0.0, 10.0) == 1.0
    assert decay(10.0, 10.0) == pytest.approx(0.5)
    assert decay(30.0, 10.0) == pytest.approx(0.125)
    assert decay(-5.0, 10.0) == 1.0  # late events never amplify


def test_history_keeps_last_n_unique_newest_last() -> None:
    rules, state = _rules(), new_user_state()
    for item in "abcd":
        rules.apply(state, _event(item), None)
    assert state["history"] == ["b", "c", "d"]
    rules.apply(state, _event("c"), None)  # re-click moves it to the end
    assert state["history"] == ["b", "d", "c"]
    rules.apply(state, _event("a"), None)
    assert state["history"] == ["d", "c", "a"]
    assert len(set(state["history"])) == len(state["history"])


def test_seen_is_capped_and_unique() -> None:
    rules, state = _rules(), new_user_state()
    for item in "abcde":
        rules.apply(state, _event(item), None)
    assert state["seen"] == ["b", "c", "d", "e"]
    rules.apply(state, _event("d"), None)
    assert state["seen"] == ["b", "c", "d", "e"]  # no duplicate, no eviction


def test_seen_disabled_with_zero() -> None:
    rules, state = _rules(max_seen=0), new_user_state()
    rules.apply(state, _event("a"), None)
    assert state["seen"] == []


def test_recent_events_window_and_duplicates() -> None:
    rules, state = _rules(), new_user_state()
    assert not rules.is_duplicate(state, "e1")
    for eid in ("e1", "e2", "e3"):
        rules.apply(state, _event("x", event_id=eid), None)
    assert state["recent_events"] == ["e2", "e3"]
    assert rules.is_duplicate(state, "e3")
    assert rules.is_duplicate(state, "e2")
    assert not rules.is_duplicate(state, "e1")  # fell out of the window
    assert not rules.is_duplicate(state, "e4")


def test_clicks_counted_and_last_ts() -> None:
    rules, state = _rules(), new_user_state()
    for i, item in enumerate("abcab"):
        rules.apply(state, _event(item, ts=T0 + i), None)
    assert state["clicks"] == 5
    assert state["last_ts"] == T0 + 4


def test_co_click_neighbours_most_recent_first() -> None:
    rules, state = _rules(history_size=10, co_click_window=2), new_user_state()
    assert rules.apply(state, _event("a"), None) == []
    assert rules.apply(state, _event("b"), None) == ["a"]
    assert rules.apply(state, _event("c"), None) == ["b", "a"]
    assert rules.apply(state, _event("d"), None) == ["c", "b"]  # only the window
    # the clicked item itself is never its own neighbour
    assert rules.apply(state, _event("d"), None) == ["c"]
    assert state["history"] == ["a", "b", "c", "d"]


def test_co_click_window_zero_gives_no_neighbours() -> None:
    rules, state = _rules(history_size=10, co_click_window=0), new_user_state()
    for item in "abc":
        rules.apply(state, _event(item), None)
    assert rules.apply(state, _event("z"), None) == []


def test_no_vector_without_item_vector() -> None:
    rules, state = _rules(), new_user_state()
    rules.apply(state, _event("a"), None)
    assert state["vector"] is None and state["vector_ts"] is None


# ---------------------------------------------------------------------------
# User vectors
# ---------------------------------------------------------------------------


def test_first_item_gives_normalised_item_vector() -> None:
    rules, state = _rules(), new_user_state()
    item = np.array([3.0, 4.0, 0.0], np.float32)
    rules.apply(state, _event("a", type="view"), item)  # weight 0.5 still normalises
    np.testing.assert_allclose(user_vector(state), [0.6, 0.8, 0.0], atol=1e-6)
    assert state["vector_ts"] == T0
    assert isinstance(state["vector"], str)  # base64 float32: JSON-able for the Faust table
    assert json.loads(json.dumps(state)) == state


def test_second_item_after_one_half_life() -> None:
    half_life = 100.0
    rules, state = _rules(updater=DecayedMean(half_life_s=half_life)), new_user_state()
    v1 = np.array([1.0, 2.0, 2.0], np.float32)
    v2 = np.array([0.0, -1.0, 0.5], np.float32)
    rules.apply(state, _event("a", ts=T0), v1)
    rules.apply(state, _event("b", ts=T0 + half_life, type="view"), v2)
    expected = _unit(0.5 * _unit(v1.astype(np.float64)) + 0.5 * v2.astype(np.float64))
    np.testing.assert_allclose(user_vector(state), expected, atol=1e-6)
    assert np.linalg.norm(user_vector(state)) == pytest.approx(1.0, abs=1e-6)
    assert state["vector_ts"] == T0 + half_life


def test_decayed_mean_direct() -> None:
    dm = DecayedMean(half_life_s=10.0)
    old = _unit(np.array([1.0, 0.0]))
    item = np.array([0.0, 1.0])
    same_time = dm.update(old, T0, item, 1.0, T0)
    np.testing.assert_allclose(same_time, _unit(np.array([1.0, 1.0])))
    much_later = dm.update(old, T0, item, 1.0, T0 + 1000.0)
    np.testing.assert_allclose(much_later, [0.0, 1.0], atol=1e-12)
    first = dm.update(None, None, np.array([0.0, 2.0]), 3.0, T0)
    np.testing.assert_allclose(first, [0.0, 1.0])


def test_last_item_updater() -> None:
    item = np.array([0.5, 0.5])
    np.testing.assert_array_equal(LastItem().update(np.ones(2), T0, item, 3.0, T0 + 1), item)


def test_user_vector_registry() -> None:
    assert {"decayed_mean", "last_item"} <= set(USER_VECTOR_UPDATERS.names())
    made = USER_VECTOR_UPDATERS.create("decayed_mean", half_life_s=5.0)
    assert isinstance(made, DecayedMean) and made.half_life_s == 5.0
    with pytest.raises(UnknownComponentError) as info:
        USER_VECTOR_UPDATERS.create("nope")
    msg = str(info.value)
    assert "'nope'" in msg
    assert "decayed_mean" in msg and "last_item" in msg
    assert "streams.user_vector.name" in msg
    with pytest.raises(UnknownComponentError, match="bad parameters"):
        USER_VECTOR_UPDATERS.create("decayed_mean", half_life=5.0)


# ---------------------------------------------------------------------------
# GraphRules
# ---------------------------------------------------------------------------


def test_edge_weight_halves_after_half_life() -> None:
    g = GraphRules(edge_half_life_s=100.0, trending_half_life_s=50.0, max_neighbours=10)
    state = new_item_state()
    g.add_neighbours(state, ["x"], T0)
    assert g.edge_weight(state["edges"]["x"], T0) == pytest.approx(1.0)
    assert g.edge_weight(state["edges"]["x"], T0 + 100.0) == pytest.approx(0.5)
    assert g.edge_weight(state["edges"]["x"], T0 + 200.0) == pytest.approx(0.25)
    g.add_neighbours(state, ["x"], T0 + 100.0, weight=2.0)
    w, last = state["edges"]["x"]
    assert w == pytest.approx(0.5 + 2.0)
    assert last == T0 + 100.0


def test_pruning_keeps_strongest_edges() -> None:
    g = GraphRules(edge_half_life_s=100.0, trending_half_life_s=50.0, max_neighbours=2)
    state = new_item_state()
    g.add_neighbours(state, ["x"], T0, weight=3.0)
    g.add_neighbours(state, ["y"], T0, weight=1.0)
    g.add_neighbours(state, ["z"], T0, weight=2.0)
    assert set(state["edges"]) == {"x", "z"}


def test_pruning_compares_decayed_weights() -> None:
    g = GraphRules(edge_half_life_s=100.0, trending_half_life_s=50.0, max_neighbours=2)
    state = new_item_state()
    g.add_neighbours(state, ["old"], T0, weight=4.0)  # 1.0 two half-lives later
    g.add_neighbours(state, ["mid"], T0 + 200.0, weight=1.5)
    g.add_neighbours(state, ["new"], T0 + 200.0, weight=1.2)
    assert set(state["edges"]) == {"mid", "new"}


def test_popularity_decays_by_half() -> None:
    g = GraphRules(edge_half_life_s=100.0, trending_half_life_s=50.0, max_neighbours=2)
    state = new_item_state()
    assert g.popularity(state, T0) == 0.0
    g.add_click(state, T0)
    assert g.popularity(state, T0) == pytest.approx(1.0)
    assert g.popularity(state, T0 + 50.0) == pytest.approx(0.5)
    g.add_click(state, T0 + 50.0, weight=2.0)
    assert g.popularity(state, T0 + 50.0) == pytest.approx(2.5)
    assert g.popularity(state, T0 + 100.0) == pytest.approx(1.25)
    assert state["pop_ts"] == T0 + 50.0
    g.add_click(state, T0 + 10.0)  # a late event never moves the clock back
    assert state["pop_ts"] == T0 + 50.0


# ---------------------------------------------------------------------------
# neighbour_scores
# ---------------------------------------------------------------------------


def _graph() -> GraphRules:
    return GraphRules(edge_half_life_s=100.0, trending_half_life_s=50.0, max_neighbours=10)


def test_neighbour_scores_prefers_recent_items() -> None:
    states = {
        "a": {"edges": {"x": [1.0, T0], "y": [1.0, T0]}, "pop": 0.0, "pop_ts": None},
        "b": {"edges": {"y": [1.0, T0], "z": [1.0, T0]}, "pop": 0.0, "pop_ts": None},
    }
    out = neighbour_scores(states.get, ["missing", "a", "b"], _graph(), T0)  # b most recent
    assert set(out) == {"x", "y", "z"}
    assert out["z"] == (pytest.approx(1.0), "b")
    assert out["x"] == (pytest.approx(0.5), "a")  # second most recent: 1/2
    assert out["y"] == (pytest.approx(1.5), "b")
    assert out["z"][0] > out["x"][0]


def test_neighbour_scores_uses_decayed_edges() -> None:
    states = {"a": {"edges": {"x": [1.0, T0], "y": [4.0, T0 - 200.0]}}}
    out = neighbour_scores(states.get, ["a"], _graph(), T0)
    assert out["x"][0] == pytest.approx(1.0)
    assert out["y"][0] == pytest.approx(1.0)  # 4 * 0.25
    assert neighbour_scores(states.get, [], _graph(), T0) == {}


def test_neighbour_scores_third_rank_weight() -> None:
    states = {"a": {"edges": {"x": [3.0, T0]}}, "b": {"edges": {}}, "c": {"edges": {}}}
    out = neighbour_scores(states.get, ["a", "b", "c"], _graph(), T0)
    assert out["x"] == (pytest.approx(1.0), "a")  # 3 * 1/3


def test_neighbour_scores_because_is_largest_contributor() -> None:
    # contributions to x: from c (rank 1) 0.3, from b (rank 2) 0.4/2 = 0.2,
    # from a (rank 3) 1.35/3 = 0.45 -> a contributed most.
    states = {
        "a": {"edges": {"x": [1.35, T0]}},
        "b": {"edges": {"x": [0.4, T0]}},
        "c": {"edges": {"x": [0.3, T0]}},
    }
    score, because = neighbour_scores(states.get, ["a", "b", "c"], _graph(), T0)["x"]
    assert score == pytest.approx(0.95)
    assert because == "a"


def test_half_life_constant() -> None:
    # guards the decay constant used everywhere above
    assert decay(1.0, 1.0) == pytest.approx(math.exp(-math.log(2.0)))


def test_vector_forms_decode_alike_and_a_batch_encodes_once() -> None:
    vec = np.array([0.6, 0.8, 0.0], np.float32)
    for form in (vec.tolist(), encode_vector(vec), vec):  # legacy list, stored, in-batch
        np.testing.assert_array_equal(user_vector({"vector": form}), vec)
    assert user_vector({"vector": None}) is None
    rules, state = _rules(), new_user_state()
    rules.apply(state, _event("a"), vec, vector_as_array=True)
    assert isinstance(state["vector"], np.ndarray)
    finish_user_state(state)
    assert isinstance(state["vector"], str)
    np.testing.assert_allclose(user_vector(state), vec, atol=1e-6)
