"""workers/scorer.py: the blend scorer, the seen filter and explanations (no broker)."""

from __future__ import annotations

import numpy as np
import pytest

from genre.core.registry import UnknownComponentError
from genre.core.vectorstore import StoredVector
from genre.schemas import ScoreRequest
from genre.workers.candidates import Candidate
from genre.workers.scorer import (
    FILTERS,
    SCORERS,
    SOURCE_REASONS,
    BlendScorer,
    Scored,
    SeenFilter,
    explain,
)


def _cands(**scores: float) -> dict[str, Candidate]:
    return {item: Candidate(score) for item, score in scores.items()}


def _keep_all(item: str) -> bool:
    return True


def _ids(scored: list[Scored]) -> list[str]:
    return [s.item_id for s in scored]


def _request(recent: list[str] | None = None, seen: list[str] | None = None) -> ScoreRequest:
    return ScoreRequest(
        user_id="u",
        trigger_event_id="e",
        trigger_produced_at=1_700_000_000.0,
        trigger_ts=1_700_000_000.0,
        recent_items=recent or [],
        seen_items=seen or [],
    )


def _sv(item: str, vector: list[float], title: str | None = None) -> StoredVector:
    payload = {} if title is None else {"title": title}
    return StoredVector(item, np.asarray(vector, np.float32), payload)


# ---------------------------------------------------------------------------
# BlendScorer
# ---------------------------------------------------------------------------


def test_blend_normalises_per_source() -> None:
    # raw sums would rank p, q (huge scores) above r, s; normalised they interleave
    per_source = [
        ("big", 1.0, _cands(p=1000.0, q=900.0)),
        ("small", 1.0, _cands(r=0.9, s=0.1)),
    ]
    ranked = BlendScorer().rank(per_source, _keep_all, 10)
    assert _ids(ranked) == ["p", "r", "q", "s"]
    scores = {s.item_id: s.score for s in ranked}
    assert scores["p"] == pytest.approx(1.0)
    assert scores["r"] == pytest.approx(1.0)
    assert scores["q"] == pytest.approx(0.0)
    assert scores["s"] == pytest.approx(0.0)


def test_blend_normalises_negative_and_mid_scores() -> None:
    ranked = BlendScorer().rank([("a", 2.0, _cands(x=-1.0, y=0.0, z=3.0))], _keep_all, 10)
    assert [(s.item_id, round(s.score, 6)) for s in ranked] == [
        ("z", 2.0),
        ("y", 0.5),
        ("x", 0.0),
    ]


def test_blend_weights_change_order() -> None:
    a, b = _cands(p=1.0, q=0.0), _cands(r=1.0, s=0.0)
    assert _ids(BlendScorer().rank([("a", 1.0, a), ("b", 2.0, b)], _keep_all, 2)) == ["r", "p"]
    assert _ids(BlendScorer().rank([("a", 2.0, a), ("b", 1.0, b)], _keep_all, 2)) == ["p", "r"]


def test_blend_sums_sources_for_shared_items() -> None:
    per_source = [
        ("a", 1.0, _cands(both=5.0, only_a=10.0, lo=0.0)),
        ("b", 1.0, _cands(both=1.0, lo2=0.0)),
    ]
    ranked = BlendScorer().rank(per_source, _keep_all, 10)
    assert ranked[0].item_id == "both"
    assert ranked[0].score == pytest.approx(1.5)


def test_blend_zero_weight_and_empty_sources_are_skipped() -> None:
    per_source = [("off", 0.0, _cands(x=100.0)), ("none", 1.0, {}), ("on", 1.0, _cands(y=1.0))]
    ranked = BlendScorer().rank(per_source, _keep_all, 10)
    assert _ids(ranked) == ["y"]
    assert BlendScorer().rank([], _keep_all, 10) == []


def test_blend_keep_filter_removes_items() -> None:
    request = _request(recent=["a"], seen=["b"])
    seen = SeenFilter()
    per_source = [("s", 1.0, _cands(a=5.0, b=4.0, c=3.0, d=2.0))]
    ranked = BlendScorer().rank(per_source, seen.predicate(request), 10)
    assert _ids(ranked) == ["c", "d"]


def test_blend_ties_broken_by_item_id_and_top_k() -> None:
    per_source = [("s", 1.0, _cands(c=5.0, a=5.0, d=5.0, b=5.0))]
    ranked = BlendScorer().rank(per_source, _keep_all, 3)
    assert _ids(ranked) == ["a", "b", "c"]  # equal scores (zero span -> all 1.0)
    assert all(s.score == pytest.approx(1.0) for s in ranked)


def test_blend_winning_source_has_largest_weighted_contribution() -> None:
    per_source = [
        ("a", 1.0, {"x": Candidate(6.0, "from-a"), "lo": Candidate(0.0), "hi": Candidate(10.0)}),
        ("b", 0.5, {"x": Candidate(1.0, "from-b"), "lo2": Candidate(0.0)}),
    ]
    scored = {s.item_id: s for s in BlendScorer().rank(per_source, _keep_all, 10)}
    x = scored["x"]
    # a contributes 1.0 * 0.6 = 0.6, b contributes 0.5 * 1.0 = 0.5
    assert x.score == pytest.approx(1.1)
    assert x.source == "a"
    assert x.because == "from-a"
    # raise b's weight: b now contributes more and wins, with its evidence item
    per_source[1] = ("b", 0.7, per_source[1][2])
    x = {s.item_id: s for s in BlendScorer().rank(per_source, _keep_all, 10)}["x"]
    assert x.source == "b"
    assert x.because == "from-b"


def test_registries() -> None:
    assert isinstance(SCORERS.create("blend"), BlendScorer)
    assert isinstance(FILTERS.create("seen"), SeenFilter)
    with pytest.raises(UnknownComponentError, match=r"scorer\.filters"):
        FILTERS.create("nsfw")


def test_seen_filter() -> None:
    request = _request(recent=["r"], seen=["s"])
    keep = SeenFilter().predicate(request)
    assert not keep("r")
    assert not keep("s")
    assert keep("new")


# ---------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------


def test_explain_because_with_known_title() -> None:
    items = {"h1": _sv("h1", [1.0, 0.0], "Toy Story")}
    reason = explain(Scored("x", 1.0, "co_click", "h1"), _request(["h1"]), items)
    assert reason == "because you watched Toy Story"


def test_explain_falls_back_to_source_phrase() -> None:
    req = _request(["h1"])
    assert explain(Scored("x", 1.0, "trending", None), req, {}) == "trending now"
    assert SOURCE_REASONS["trending"] == "trending now"
    # because set but its title unknown -> the source's phrase
    assert explain(Scored("x", 1.0, "co_click", "h1"), req, {}) == SOURCE_REASONS["co_click"]
    untitled = {"h1": _sv("h1", [1.0, 0.0])}
    assert explain(Scored("x", 1.0, "trending", "h1"), req, untitled) == "trending now"
    assert explain(Scored("x", 1.0, "mystery", None), req, {}) == "from mystery"


def test_explain_ann_picks_most_similar_recent_item() -> None:
    items = {
        "h1": _sv("h1", [1.0, 0.0], "Heat"),
        "h2": _sv("h2", [0.0, 1.0], "Toy Story"),
        "x": _sv("x", [0.1, 0.9], "Toy Story 2"),
        "y": _sv("y", [0.95, 0.05], "Ronin"),
    }
    req = _request(["h1", "h2"])
    assert explain(Scored("x", 1.0, "ann", None), req, items) == "because you watched Toy Story"
    assert explain(Scored("y", 1.0, "ann", None), req, items) == "because you watched Heat"


def test_explain_ann_without_vectors_uses_phrase() -> None:
    req = _request(["h1"])
    only_target = {"x": _sv("x", [1.0, 0.0], "X")}
    assert explain(Scored("x", 1.0, "ann", None), req, only_target) == "matches your taste"
    only_history = {"h1": _sv("h1", [1.0, 0.0], "Heat")}
    assert explain(Scored("x", 1.0, "ann", None), req, only_history) == "matches your taste"


def test_trending_list_of_a_young_graph_catches_up_at_once() -> None:
    """A fresh deployment: the first list was made from an empty graph; the next user
    must not wait ``refresh_s`` for trending items that the graph already holds."""
    from types import SimpleNamespace

    from genre.core.config import GenreConfig
    from genre.streams.agents import graph_rules
    from genre.streams.state import new_item_state
    from genre.workers.candidates import TrendingSource

    graph: dict[str, dict] = {}
    streams = SimpleNamespace(config=GenreConfig(), graph=graph, event_now=lambda: 1.7e9)
    source = TrendingSource(streams, limit=2, refresh_s=3600.0)
    assert source.top() == []
    rules = graph_rules(streams)
    for item, clicks in (("a", 1), ("b", 3)):
        graph[item] = new_item_state()
        for _ in range(clicks):
            rules.add_click(graph[item], 1.7e9)
    assert [item for item, _ in source.top()] == ["b", "a"]
    # A full list (4 x limit items) waits for its refresh, however the graph changes.
    for item in ("c", "d"):
        graph[item] = new_item_state()
        rules.add_click(graph[item], 1.7e9, weight=0.5)
    source = TrendingSource(streams, limit=1, refresh_s=3600.0)
    assert [item for item, _ in source.top()] == ["b", "a", "c", "d"]
    graph["e"] = new_item_state()
    rules.add_click(graph["e"], 1.7e9, weight=10)
    assert [item for item, _ in source.top()] == ["b", "a", "c", "d"]


def test_online_hits_count_against_the_list_shown_when_the_user_clicked() -> None:
    from genre.schemas import Recommendation, RecommendedItem
    from genre.workers.scorer import latest_list_entry, list_shown_at

    def rec(items: list[str], at: float) -> Recommendation:
        return Recommendation(
            user_id="u",
            items=[RecommendedItem(item_id=i, score=1.0, source="ann", reason="r") for i in items],
            model_version="m",
            trigger_event_id="e",
            generated_at=at,
            latency_ms=1.0,
        )

    assert list_shown_at(None, 100.0) == []
    assert list_shown_at(["a"], 100.0) == ["a"]  # entries from before lists were dated
    first = latest_list_entry(rec(["a", "b"], 100.0), None)
    second = latest_list_entry(rec(["c"], 200.0), first)
    assert list_shown_at(second, 250.0) == ["c"]
    # Clicked at 150, scored after the 200 list went out: the 100 list was on screen.
    assert list_shown_at(second, 150.0) == ["a", "b"]
    assert list_shown_at(second, 50.0) == ["a", "b"]  # the oldest we keep
