"""core/features: user-state rules, user-vector updaters, the co-click graph, the codec,
the feature spec and the ranker's candidate features."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from genre.core.config import GenreConfig
from genre.core.features import (
    ITEM_IDS,
    USER_VECTOR_UPDATERS,
    CoClickEvidence,
    FeatureSpec,
    GraphRules,
    ItemIds,
    ItemState,
    NeighbourScores,
    UserState,
    UserStateRules,
    apply_evidence,
    candidate_features,
    click_evidence,
    decay,
    decode_vector,
    encode_vector,
    profile_match,
)
from genre.core.features.graph import PRUNE_SLACK
from genre.core.features.users import DecayedMean, LastItem
from genre.core.registry import UnknownComponentError

T0 = 1_700_000_000.0
_ids = itertools.count()


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


def _apply(
    rules: UserStateRules,
    state: UserState,
    item: str,
    vector: np.ndarray | None = None,
    *,
    ts: float = T0,
    kind: str = "click",
    event_id: str | None = None,
) -> list[str]:
    return rules.apply(
        state,
        item_id=item,
        event_id=event_id or f"e{next(_ids)}",
        kind=kind,
        ts=ts,
        item_vector=vector,
    )


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
    ages = np.array([-5.0, 0.0, 10.0, 30.0])
    np.testing.assert_allclose(decay(ages, 10.0), [1.0, 1.0, 0.5, 0.125])


def test_history_keeps_last_n_unique_newest_last() -> None:
    rules, state = _rules(), UserState()
    for item in "abcd":
        _apply(rules, state, item)
    assert state.history == ["b", "c", "d"]
    _apply(rules, state, "c")  # re-click moves it to the end
    assert state.history == ["b", "d", "c"]
    _apply(rules, state, "a")
    assert state.history == ["d", "c", "a"]
    assert len(set(state.history)) == len(state.history)


def test_seen_is_capped_and_unique_oldest_dropped() -> None:
    rules, state = _rules(), UserState()
    for item in "abcde":
        _apply(rules, state, item)
    assert list(state.seen) == ["b", "c", "d", "e"]
    _apply(rules, state, "d")
    assert list(state.seen) == ["b", "c", "d", "e"]  # no duplicate, no eviction


def test_seen_disabled_with_zero() -> None:
    rules, state = _rules(max_seen=0), UserState()
    _apply(rules, state, "a")
    assert len(state.seen) == 0
    assert state.history == ["a"]


def test_recent_events_window_and_duplicates() -> None:
    rules, state = _rules(), UserState()
    assert not rules.is_duplicate(state, "e1")
    for eid in ("e1", "e2", "e3"):
        _apply(rules, state, "x", event_id=eid)
    assert list(state.recent_events) == ["e2", "e3"]
    assert rules.is_duplicate(state, "e3")
    assert rules.is_duplicate(state, "e2")
    assert not rules.is_duplicate(state, "e1")  # fell out of the window
    assert not rules.is_duplicate(state, "e4")


def test_clicks_counted_and_last_ts() -> None:
    rules, state = _rules(), UserState()
    for i, item in enumerate("abcab"):
        _apply(rules, state, item, ts=T0 + i)
    assert state.clicks == 5
    assert state.last_ts == T0 + 4


def test_co_click_neighbours_most_recent_first() -> None:
    rules, state = _rules(history_size=10, co_click_window=2), UserState()
    assert _apply(rules, state, "a") == []
    assert _apply(rules, state, "b") == ["a"]
    assert _apply(rules, state, "c") == ["b", "a"]
    assert _apply(rules, state, "d") == ["c", "b"]  # only the window
    # the clicked item itself is never its own neighbour
    assert _apply(rules, state, "d") == ["c"]
    assert state.history == ["a", "b", "c", "d"]


def test_co_click_window_zero_gives_no_neighbours() -> None:
    rules, state = _rules(history_size=10, co_click_window=0), UserState()
    for item in "abc":
        _apply(rules, state, item)
    assert _apply(rules, state, "z") == []


def test_no_vector_without_item_vector() -> None:
    rules, state = _rules(), UserState()
    _apply(rules, state, "a")
    assert state.vector is None and state.vector_ts is None
    assert state.history == ["a"] and state.clicks == 1  # the rest still changes


def test_history_ids_are_interned() -> None:
    rules, a, b = _rules(), UserState(), UserState()
    _apply(rules, a, "".join(["it", "em-1"]))
    _apply(rules, b, "".join(["ite", "m-1"]))
    assert a.history[0] is b.history[0]
    assert a.seen.rows.tolist() == b.seen.rows.tolist()  # one row per item


def test_profile_due_counts_clicks_since_the_last_profile() -> None:
    rules, state = _rules(), UserState()
    for item in "ab":
        _apply(rules, state, item)
    assert not rules.profile_due(state, 3)
    _apply(rules, state, "c")
    assert rules.profile_due(state, 3)
    assert not rules.profile_due(state, 0)  # profiles off
    state.profiled_clicks = state.clicks
    assert not rules.profile_due(state, 3)
    for item in "def":
        _apply(rules, state, item)
    assert rules.profile_due(state, 3)


# ---------------------------------------------------------------------------
# UserState: changelog form
# ---------------------------------------------------------------------------


def test_user_state_round_trips_through_its_bytes() -> None:
    rules, state = _rules(), UserState()
    vec = np.array([3.0, 4.0, 0.0], np.float32)
    for i, item in enumerate("abcd"):
        _apply(rules, state, item, vec, ts=T0 + i)
    state.profiled_clicks = 2
    back = UserState.from_bytes(state.to_bytes())
    assert back.history == state.history
    assert list(back.seen) == list(state.seen)  # order kept: trimming drops the oldest
    assert list(back.recent_events) == list(state.recent_events)
    assert (back.clicks, back.vector_ts, back.last_ts, back.profiled_clicks) == (
        4,
        T0 + 3,
        T0 + 3,
        2,
    )
    assert back.vector is not None and back.vector.dtype == np.float32
    np.testing.assert_array_equal(back.vector, state.vector)
    # The vector travels as base64 float32, not a float list.
    assert b'"vector":"' in state.to_bytes()
    empty = UserState.from_bytes(UserState().to_bytes())
    assert empty == UserState()


@pytest.mark.parametrize(
    "payload", [b"{}", b'{"history": 3, "seen": [], "recent_events": [], "clicks": 0}', b"[]"]
)
def test_user_state_refuses_other_json(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a user state"):
        UserState.from_bytes(payload)


# ---------------------------------------------------------------------------
# User vectors
# ---------------------------------------------------------------------------


def test_first_item_gives_normalised_item_vector() -> None:
    rules, state = _rules(), UserState()
    item = np.array([3.0, 4.0, 0.0], np.float32)
    _apply(rules, state, "a", item, kind="view")  # weight 0.5 still normalises
    assert state.vector is not None and state.vector.dtype == np.float32
    np.testing.assert_allclose(state.vector, [0.6, 0.8, 0.0], atol=1e-6)
    assert state.vector_ts == T0


def test_second_item_after_one_half_life() -> None:
    half_life = 100.0
    rules, state = _rules(updater=DecayedMean(half_life_s=half_life)), UserState()
    v1 = np.array([1.0, 2.0, 2.0], np.float32)
    v2 = np.array([0.0, -1.0, 0.5], np.float32)
    _apply(rules, state, "a", v1, ts=T0)
    _apply(rules, state, "b", v2, ts=T0 + half_life, kind="view")
    expected = _unit(0.5 * _unit(v1.astype(np.float64)) + 0.5 * v2.astype(np.float64))
    np.testing.assert_allclose(state.vector, expected, atol=1e-6)
    assert np.linalg.norm(state.vector) == pytest.approx(1.0, abs=1e-6)
    assert state.vector_ts == T0 + half_life


def test_unknown_kind_weighs_one() -> None:
    rules = _rules(updater=DecayedMean(half_life_s=100.0))
    v1, v2 = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    for kind, expected in (("purchase", [1.0, 1.0]), ("view", [1.0, 0.5])):
        state = UserState()
        _apply(rules, state, "a", v1)
        _apply(rules, state, "b", v2, kind=kind)
        np.testing.assert_allclose(state.vector, _unit(np.array(expected)), atol=1e-6)


def test_vector_catches_up_after_a_click_without_one() -> None:
    rules, state = _rules(), UserState()
    _apply(rules, state, "a", np.array([1.0, 0.0], np.float32), ts=T0)
    _apply(rules, state, "b", None, ts=T0 + 50.0)  # vector store down
    assert state.vector_ts == T0  # the vector did not move
    _apply(rules, state, "c", np.array([0.0, 1.0], np.float32), ts=T0 + 100.0)
    # decayed from the last vector's time (one half-life), not the last click's
    np.testing.assert_allclose(state.vector, _unit(np.array([0.5, 1.0])), atol=1e-6)


def test_decayed_mean_direct() -> None:
    """One row per user, one click each: an old vector decayed to the click's time, and a
    first vector (``known`` False) that is the item's, whatever its weight."""
    dm = DecayedMean(half_life_s=10.0)
    f32 = np.float32
    vectors = np.array([_unit(np.array([1.0, 0.0])), _unit(np.array([1.0, 0.0])), [0, 0]], f32)
    out = dm.update(
        vectors,
        np.array([True, True, False]),
        np.array([T0, T0, 0.0]),
        np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 2.0]], f32),
        np.array([1.0, 1.0, 3.0]),
        np.array([T0, T0 + 1000.0, T0]),
    )
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out[0], _unit(np.array([1.0, 1.0])), atol=1e-6)  # same time
    np.testing.assert_allclose(out[1], [0.0, 1.0], atol=1e-6)  # 100 half-lives later
    np.testing.assert_allclose(out[2], [0.0, 1.0], atol=1e-6)  # first: the item's direction
    none, z = np.array([False]), np.zeros((1, 2), f32)
    zero = dm.update(z, none, np.zeros(1), z, np.ones(1), np.full(1, T0))
    assert np.all(np.isfinite(zero)) and not zero.any()  # a zero item never divides by 0


def test_last_item_updater() -> None:
    items = np.array([[0.5, 0.5], [1.0, 0.0]], np.float32)
    out = LastItem().update(
        np.ones((2, 2), np.float32),
        np.array([True, False]),
        np.array([T0, 0.0]),
        items,
        np.array([3.0, 1.0]),
        np.array([T0 + 1, T0 + 2]),
    )
    np.testing.assert_array_equal(out, items)


def test_column_wise_vector_updates_equal_one_click_at_a_time() -> None:
    """``update_vectors`` folds every user's first click in one array operation, then the
    second, ...: the same vectors as applying each click on its own, in order."""
    rules = _rules(updater=DecayedMean(half_life_s=50.0))
    rng = np.random.default_rng(3)
    clicks = [  # (user, item vector, kind, ts): users interleaved, uneven counts
        (u, rng.normal(size=4).astype(np.float32), kind, T0 + 7.0 * n)
        for n, (u, kind) in enumerate(
            [(0, "click"), (1, "view"), (0, "view"), (2, "click"), (0, "click"), (1, "click")]
        )
    ]
    one_by_one = [UserState() for _ in range(3)]
    for u, vec, kind, ts in clicks:
        _apply(rules, one_by_one[u], f"i{ts}", vec, ts=ts, kind=kind)
    batched = [UserState() for _ in range(3)]
    rules.update_vectors([(batched[u], vec, kind, ts) for u, vec, kind, ts in clicks])
    for a, b in zip(one_by_one, batched, strict=True):
        assert a.vector_ts == b.vector_ts
        np.testing.assert_allclose(a.vector, b.vector, rtol=1e-6, atol=1e-7)
    assert batched[1].vector_ts == T0 + 35.0


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
# Vector codec
# ---------------------------------------------------------------------------


def test_vector_codec_round_trips_float32() -> None:
    vec = np.array([0.6, 0.8, 0.0, -1.5e-7], np.float32)
    text = encode_vector(vec)
    assert isinstance(text, str) and len(text) == 24  # 16 bytes as base64
    back = decode_vector(text)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, vec)
    np.testing.assert_array_equal(decode_vector(encode_vector(vec.astype(np.float64))), vec)
    assert decode_vector(encode_vector(np.zeros(0, np.float32))).shape == (0,)


@pytest.mark.parametrize("text", ["AAA=", "not base64!", "AAAAAAA="])
def test_vector_codec_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        decode_vector(text)


# ---------------------------------------------------------------------------
# GraphRules
# ---------------------------------------------------------------------------


def _graph(max_neighbours: int = 10) -> GraphRules:
    return GraphRules(
        edge_half_life_s=100.0, trending_half_life_s=50.0, max_neighbours=max_neighbours
    )


def _edge_weight(g: GraphRules, state: ItemState, nbr: str, now: float) -> float:
    w, last = state.edges[nbr]
    return w * decay(now - last, g.edge_half_life_s)


def test_edge_weight_halves_after_half_life() -> None:
    g, state = _graph(), ItemState()
    g.add_neighbours(state, ["x"], T0)
    assert _edge_weight(g, state, "x", T0) == pytest.approx(1.0)
    assert _edge_weight(g, state, "x", T0 + 100.0) == pytest.approx(0.5)
    assert _edge_weight(g, state, "x", T0 + 200.0) == pytest.approx(0.25)
    g.add_neighbours(state, ["x"], T0 + 100.0, weight=2.0)
    w, last = state.edges["x"]
    assert w == pytest.approx(0.5 + 2.0)
    assert last == T0 + 100.0
    g.add_neighbours(state, ["x"], T0 + 50.0)  # late: undecayed, the clock stays
    assert state.edges["x"] == [pytest.approx(3.5), T0 + 100.0]


def test_pruning_waits_for_the_slack_then_keeps_the_strongest() -> None:
    g, state = _graph(max_neighbours=4), ItemState()
    limit = int(4 * (1 + PRUNE_SLACK))  # 5: edges may exceed max_neighbours by the slack
    weights = {"a": 5.0, "b": 1.0, "c": 4.0, "d": 2.0, "e": 3.0}
    for nbr, w in weights.items():
        g.add_neighbours(state, [nbr], T0, weight=w)
    assert len(state.edges) == limit  # within the slack: not pruned yet
    g.add_neighbours(state, ["f"], T0, weight=0.5)
    assert set(state.edges) == {"a", "c", "e", "d"}  # pruned to the 4 strongest


def test_pruning_compares_decayed_weights() -> None:
    g, state = _graph(max_neighbours=1), ItemState()
    g.add_neighbours(state, ["old"], T0, weight=4.0)  # 1.0 two half-lives later
    g.add_neighbours(state, ["mid"], T0 + 200.0, weight=1.5)  # 2 edges > 1.25: prune to 1
    assert set(state.edges) == {"mid"}
    g, state = _graph(max_neighbours=1), ItemState()
    g.add_neighbours(state, ["old"], T0, weight=4.0)
    g.add_neighbours(state, ["new"], T0 + 200.0, weight=0.9)
    assert set(state.edges) == {"old"}


def test_popularity_decays_by_half() -> None:
    g, state = _graph(), ItemState()
    assert g.popularity(state, T0) == 0.0
    assert g.popularity(None, T0) == 0.0  # unknown item
    g.add_click(state, T0)
    assert g.popularity(state, T0) == pytest.approx(1.0)
    assert g.popularity(state, T0 + 50.0) == pytest.approx(0.5)
    g.add_click(state, T0 + 50.0, weight=2.0)
    assert g.popularity(state, T0 + 50.0) == pytest.approx(2.5)
    assert g.popularity(state, T0 + 100.0) == pytest.approx(1.25)
    assert state.pop_ts == T0 + 50.0
    g.add_click(state, T0 + 10.0)  # a late event never moves the clock back
    assert state.pop_ts == T0 + 50.0
    assert state.pop == pytest.approx(3.5)


def test_item_state_copy_is_independent_and_round_trips() -> None:
    g, state = _graph(), ItemState()
    g.add_neighbours(state, ["x", "y"], T0)
    g.add_click(state, T0)
    copy = state.copy()
    g.add_neighbours(copy, ["x", "z"], T0 + 10.0)
    g.add_click(copy, T0 + 10.0)
    assert set(state.edges) == {"x", "y"} and state.edges["x"] == [1.0, T0]
    assert state.pop == 1.0 and state.pop_ts == T0
    back = ItemState.from_bytes(copy.to_bytes())
    assert back == copy
    with pytest.raises(ValueError, match="not an item state"):
        ItemState.from_bytes(b'{"edges": {"x": [1.0]}, "pop": 0, "pop_ts": null}')


# ---------------------------------------------------------------------------
# Co-click evidence
# ---------------------------------------------------------------------------


def test_click_evidence_links_both_ways_and_counts_one_click() -> None:
    evidence = click_evidence("c", ["b", "a"], T0)
    assert evidence == [
        CoClickEvidence("c", ("b", "a"), 1.0, T0),
        CoClickEvidence("b", ("c",), 0.0, T0),
        CoClickEvidence("a", ("c",), 0.0, T0),
    ]
    assert click_evidence("a", [], T0) == [CoClickEvidence("a", (), 1.0, T0)]


def test_apply_evidence_folds_into_copies_in_order() -> None:
    g = _graph()
    published = {"a": ItemState(edges={"z": [2.0, T0 - 100.0]}, pop=1.0, pop_ts=T0 - 50.0)}
    before = published["a"].to_bytes()
    evidence = click_evidence("b", ["a"], T0) + click_evidence("a", ["b"], T0 + 100.0)
    touched = apply_evidence(g, evidence, published.get)
    assert published["a"].to_bytes() == before  # the published state is untouched
    assert set(touched) == {"a", "b"}
    a, b = touched["a"], touched["b"]
    assert a is not published["a"]
    assert a.edges["z"] == [2.0, T0 - 100.0]
    # a->b: 1 at T0, then +1 at T0+100 (one half-life later)
    assert a.edges["b"] == [pytest.approx(1.5), T0 + 100.0]
    assert b.edges["a"] == [pytest.approx(1.5), T0 + 100.0]
    assert g.popularity(a, T0 + 100.0) == pytest.approx(1.0 * 0.125 + 1.0)
    assert g.popularity(b, T0 + 100.0) == pytest.approx(0.25)
    assert apply_evidence(g, [], published.get) == {}


# ---------------------------------------------------------------------------
# neighbour_scores
# ---------------------------------------------------------------------------


def _states(**edges: dict[str, list[float]]) -> dict[str, ItemState]:
    return {item: ItemState(edges=e) for item, e in edges.items()}


def test_neighbour_scores_prefers_recent_items() -> None:
    states = _states(a={"x": [1.0, T0], "y": [1.0, T0]}, b={"y": [1.0, T0], "z": [1.0, T0]})
    out = _graph().neighbour_scores(states.get, ["missing", "a", "b"], T0).as_dict()
    # b is the most recent
    assert set(out) == {"x", "y", "z"}
    assert out["z"] == (pytest.approx(1.0), "b")
    assert out["x"] == (pytest.approx(0.5), "a")  # second most recent: 1/2
    assert out["y"] == (pytest.approx(1.5), "b")


def test_neighbour_scores_uses_decayed_edges() -> None:
    states = _states(a={"x": [1.0, T0], "y": [4.0, T0 - 200.0], "late": [1.0, T0 + 50.0]})
    out = _graph().neighbour_scores(states.get, ["a"], T0).as_dict()
    assert out["x"][0] == pytest.approx(1.0)
    assert out["y"][0] == pytest.approx(1.0)  # 4 * 0.25
    assert out["late"][0] == pytest.approx(1.0)  # an edge newer than now never amplifies
    assert len(_graph().neighbour_scores(states.get, [], T0)) == 0


def test_neighbour_scores_third_rank_weight() -> None:
    states = _states(a={"x": [3.0, T0]}, b={}, c={})
    out = _graph().neighbour_scores(states.get, ["a", "b", "c"], T0).as_dict()
    assert out["x"] == (pytest.approx(1.0), "a")  # 3 * 1/3


def test_neighbour_scores_because_is_largest_contributor() -> None:
    # contributions to x: from c (rank 1) 0.3, from b (rank 2) 0.4/2 = 0.2,
    # from a (rank 3) 1.35/3 = 0.45 -> a contributed most.
    states = _states(a={"x": [1.35, T0]}, b={"x": [0.4, T0]}, c={"x": [0.3, T0]})
    scores = _graph().neighbour_scores(states.get, ["a", "b", "c"], T0)
    score, because = scores.as_dict()["x"]
    assert score == pytest.approx(0.95)
    assert because == "a"


def test_neighbour_scores_on_ties_name_the_most_recent_item() -> None:
    states = _states(a={"x": [1.0, T0]}, b={"x": [0.5, T0]})  # a: 1/2, b: 0.5 -> tie
    assert _graph().neighbour_scores(states.get, ["a", "b"], T0).as_dict()["x"][1] == "b"


def test_neighbour_scores_match_the_per_edge_loop() -> None:
    """The column-wise sum equals the plain loop over recent items and edges it replaced
    (the reference below), on a random graph, edges of several ages included."""
    rng = np.random.default_rng(7)
    items = [f"n{i}" for i in range(40)]
    states = {
        item: ItemState(
            edges={
                str(nbr): [float(rng.gamma(1.0, 2.0)), T0 - float(rng.integers(0, 400))]
                for nbr in rng.choice(items, size=int(rng.integers(0, 12)), replace=False)
            }
        )
        for item in items
    }
    g = _graph()
    recent = [str(i) for i in rng.choice(items, size=10, replace=False)]

    totals: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    for rank, item in enumerate(reversed(recent)):
        for nbr, (w, last) in states[item].edges.items():
            c = w * decay(T0 - last, g.edge_half_life_s) / (rank + 1)
            totals[nbr] = totals.get(nbr, 0.0) + c
            if nbr not in best or c > best[nbr][0]:
                best[nbr] = (c, item)
    got = g.neighbour_scores(states.get, recent, T0)
    assert got.as_dict() == {
        nbr: (pytest.approx(total, rel=1e-12), best[nbr][1]) for nbr, total in totals.items()
    }
    rows = ITEM_IDS.rows([*totals, "never-a-neighbour"])
    np.testing.assert_allclose(got.lookup(rows), [*totals.values(), 0.0], rtol=1e-12)
    assert len(NeighbourScores.empty().lookup(rows)) == len(rows)


def test_edge_arrays_follow_the_edges() -> None:
    """A state caches its edges as arrays on first read; an update starts afresh."""
    g, state = _graph(), ItemState()
    g.add_neighbours(state, ["p", "q"], T0)
    rows, weights, last = state.edge_arrays()
    assert [ITEM_IDS.names[r] for r in rows] == ["p", "q"]
    assert weights.tolist() == [1.0, 1.0] and last.tolist() == [T0, T0]
    assert state.edge_arrays() is state.edge_arrays()  # cached
    g.add_neighbours(state, ["q", "r"], T0)
    rows, weights, _ = state.edge_arrays()
    assert [ITEM_IDS.names[r] for r in rows] == ["p", "q", "r"]
    assert weights.tolist() == [1.0, 2.0, 1.0]
    assert state.copy().arrays is None  # a copy to update never shares them
    assert ItemState.from_bytes(state.to_bytes()) == state  # not part of the state


def test_item_ids_are_stable_rows() -> None:
    ids = ItemIds()
    assert ids.row("a") == 0 and ids.row("b") == 1 and ids.row("a") == 0
    assert ids.rows(["b", "c", "a"]).tolist() == [1, 2, 0]
    assert ids.rows([]).dtype == np.int64
    assert ids.names == ["a", "b", "c"] and len(ids) == 3


def test_half_life_constant() -> None:
    # guards the decay constant used everywhere above
    assert decay(1.0, 1.0) == pytest.approx(math.exp(-math.log(2.0)))


# ---------------------------------------------------------------------------
# FeatureSpec
# ---------------------------------------------------------------------------


def test_spec_from_config_matches_its_defaults() -> None:
    config = GenreConfig()
    spec = FeatureSpec.from_streams(config.streams)
    assert spec == FeatureSpec()  # genre.yaml's defaults and the spec's agree
    assert spec.history_len == config.streams.history_size
    tuned = FeatureSpec.from_streams(
        GenreConfig(
            streams={"history_size": 7, "user_vector": {"name": "last_item", "params": {}}}
        ).streams,
        co_click_recent=3,
    )
    assert (tuned.history_size, tuned.history_len, tuned.co_click_recent) == (7, 7, 3)
    assert isinstance(tuned.user_rules().updater, LastItem)


def test_spec_makes_the_rules() -> None:
    spec = FeatureSpec(
        history_size=4,
        max_seen=9,
        dedup_window=3,
        co_click_window=2,
        click_weights={"click": 2.0},
        user_vector_params={"half_life_s": 60.0},
        edge_half_life_s=10.0,
        trending_half_life_s=20.0,
        max_neighbours=30,
    )
    rules = spec.user_rules()
    assert (rules.history_size, rules.max_seen, rules.dedup_window, rules.co_click_window) == (
        4,
        9,
        3,
        2,
    )
    assert rules.click_weights == {"click": 2.0}
    assert rules.updater == DecayedMean(half_life_s=60.0)
    assert spec.graph_rules() == GraphRules(10.0, 20.0, 30)


def test_spec_refuses_unknown_features() -> None:
    with pytest.raises(ValueError, match="unknown ranker features"):
        FeatureSpec(feature_names=("trending", "dwell_time"))


def test_spec_drift_names_changed_stream_rules_only() -> None:
    trained = FeatureSpec().as_manifest()
    assert FeatureSpec().drift(trained) == {}
    # ints and floats compare by value, as JSON round trips them
    trained_json = {**trained, "max_neighbours": 100.0, "edge_half_life_s": 604800}
    assert FeatureSpec().drift(trained_json) == {}
    served = FeatureSpec(max_neighbours=50, click_weights={"click": 2.0})
    drift = served.drift(trained)
    assert set(drift) == {"max_neighbours", "click_weights"}
    assert drift["max_neighbours"] == (100, 50)
    # evaluation-only fields and the feature names: no drift
    other = FeatureSpec(popularity_half_lives=(1.0,), feature_names=("co_click",))
    assert other.drift(trained) == {}
    # a stream rule the manifest does not record is drift too: nothing says it matched
    partial = {k: v for k, v in trained.items() if k != "co_click_recent"}
    assert FeatureSpec().drift(partial) == {"co_click_recent": (None, 10)}
    assert set(FeatureSpec(co_click_recent=3).drift(trained)) == {"co_click_recent"}


def test_spec_manifest_is_plain_json() -> None:
    import json

    manifest = FeatureSpec().as_manifest()
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest["feature_names"] == ["trending", "co_click"]


# ---------------------------------------------------------------------------
# Candidate features
# ---------------------------------------------------------------------------


def test_candidate_features_in_spec_order() -> None:
    spec = FeatureSpec(co_click_recent=2, feature_names=("co_click", "trending", "profile"))
    g = spec.graph_rules()
    graph = {
        "h1": ItemState(edges={"x": [2.0, T0]}),
        "h2": ItemState(edges={"y": [1.0, T0]}),
        "h3": ItemState(edges={"x": [1.0, T0]}),
        "x": ItemState(pop=3.0, pop_ts=T0),
    }
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    cache: dict[str, float] = {}
    out = candidate_features(
        spec,
        g,
        graph.get,
        ["x", "y", "unknown"],
        T0,
        history=["h1", "h2", "h3"],  # only the last two (co_click_recent) count
        candidate_vectors=vectors,
        profile=np.array([0.6, 0.8], np.float32),
        popularity=cache,
    )
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out[:, 0], [1.0, 0.5, 0.0])  # x from h3 (rank 1), y from h2 (1/2)
    np.testing.assert_allclose(out[:, 1], [3.0, 0.0, 0.0])
    np.testing.assert_allclose(out[:, 2], [0.6, 0.8, 0.0], atol=1e-6)  # negative cos -> 0
    assert cache == {"x": pytest.approx(3.0), "y": 0.0, "unknown": 0.0}
    # precomputed co-click scores are used as given
    given = candidate_features(
        spec,
        g,
        graph.get,
        ["x"],
        T0,
        co_scores=NeighbourScores(ITEM_IDS.rows(["x"]), np.array([7.0]), ITEM_IDS.rows(["h1"])),
        candidate_vectors=vectors[:1],
    )
    assert given[0, 0] == 7.0 and given[0, 2] == 0.0  # no profile: 0


def test_candidate_features_edge_cases() -> None:
    spec = FeatureSpec(feature_names=("profile",))
    with pytest.raises(ValueError, match="text vectors"):
        candidate_features(spec, spec.graph_rules(), {}.get, ["x"], T0)
    none = FeatureSpec(feature_names=())
    assert candidate_features(none, none.graph_rules(), {}.get, ["x", "y"], T0).shape == (2, 0)
    assert profile_match(np.zeros((0, 2), np.float32), np.ones(2)).shape == (0,)
