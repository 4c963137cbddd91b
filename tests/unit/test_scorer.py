"""workers/scorer.py and workers/candidates.py: the blend ranking, the seen filter,
explanations, candidate sources and a whole ``ScorerWorker.score`` over in-memory views
(no broker, no Faust)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from genre.core.config import GenreConfig
from genre.core.exact_index import ExactIndex
from genre.core.features import ITEM_IDS, FeatureSpec, ItemState
from genre.core.features.ids import SeenItems
from genre.core.registry import UnknownComponentError
from genre.core.telemetry import METRICS
from genre.core.vectorstore import StoredVector
from genre.schemas import Recommendation
from genre.streams.score_context import ScoreContext
from genre.streams.views import (
    CatalogSearch,
    FixedClock,
    MemoryGraph,
    MemoryProfiles,
    ScorerViews,
    memory_items,
)
from genre.workers.candidates import (
    CANDIDATE_SOURCES,
    AnnSource,
    Candidates,
    CoClickSource,
    ProfileSource,
    TrendingSource,
)
from genre.workers.scorer import (
    FILTERS,
    RANKINGS,
    SOURCE_REASONS,
    BlendRanking,
    Scored,
    ScoredList,
    ScorerWorker,
    SeenFilter,
    explain,
    hops,
    latest_list_entry,
    list_shown_at,
    matching_interest,
)

NOW = 1_700_000_000.0


def _cands(**scores: float) -> Candidates:
    return Candidates.of(list(scores), list(scores.values()))


def _explained(**scores: tuple[float, str | None]) -> Candidates:
    """Candidates with the history item that explains each (None: none)."""
    because = [ITEM_IDS.row(b) if b is not None else -1 for _, b in scores.values()]
    return Candidates(
        ITEM_IDS.rows(list(scores)),
        np.asarray([score for score, _ in scores.values()], np.float64),
        np.asarray(because, np.int64),
    )


def _keep_all(item_ids: list[str]) -> list[bool]:
    return [True] * len(item_ids)


def _items(cands: Candidates) -> dict[str, float]:
    return dict(zip(cands.item_ids(), cands.scores.tolist(), strict=True))


def _because(cands: Candidates) -> dict[str, str | None]:
    assert cands.because is not None
    names = ITEM_IDS.names
    return {
        item: names[b] if b >= 0 else None
        for item, b in zip(cands.item_ids(), cands.because.tolist(), strict=True)
    }


def _ids(scored: list[Scored]) -> list[str]:
    return [s.item_id for s in scored]


def _ctx(
    recent: list[str] | None = None,
    seen: list[str] | None = None,
    *,
    user: str = "u",
    vector: np.ndarray | None = None,
    **over: object,
) -> ScoreContext:
    history = tuple(recent or ())
    fields: dict = {
        "user_id": user,
        "trigger_event_id": f"e-{user}",
        "trigger_produced_at": NOW,
        "trigger_ts": NOW,
        "history": history,
        "seen": dict.fromkeys([*(seen or ()), *history]),
        "clicks": len(history),
        "vector": vector,
    }
    fields.update(over)
    return ScoreContext(**fields)


def _sv(item: str, vector: list[float], title: str | None = None) -> StoredVector:
    payload = {} if title is None else {"title": title}
    return StoredVector(item, np.asarray(vector, np.float32), payload)


# ---------------------------------------------------------------------------
# BlendRanking
# ---------------------------------------------------------------------------


def test_blend_normalises_per_source() -> None:
    # raw sums would rank p, q (huge scores) above r, s; normalised they interleave
    per_source = [
        ("big", 1.0, _cands(p=1000.0, q=900.0)),
        ("small", 1.0, _cands(r=0.9, s=0.1)),
    ]
    ranked = BlendRanking().rank(per_source, _keep_all, 10)
    assert _ids(ranked) == ["p", "r", "q", "s"]
    scores = {s.item_id: s.score for s in ranked}
    assert scores["p"] == pytest.approx(1.0)
    assert scores["r"] == pytest.approx(1.0)
    assert scores["q"] == pytest.approx(0.0)
    assert scores["s"] == pytest.approx(0.0)


def test_blend_normalises_negative_and_mid_scores() -> None:
    ranked = BlendRanking().rank([("a", 2.0, _cands(x=-1.0, y=0.0, z=3.0))], _keep_all, 10)
    assert [(s.item_id, round(s.score, 6)) for s in ranked] == [
        ("z", 2.0),
        ("y", 0.5),
        ("x", 0.0),
    ]


def test_blend_weights_change_order() -> None:
    a, b = _cands(p=1.0, q=0.0), _cands(r=1.0, s=0.0)
    assert _ids(BlendRanking().rank([("a", 1.0, a), ("b", 2.0, b)], _keep_all, 2)) == ["r", "p"]
    assert _ids(BlendRanking().rank([("a", 2.0, a), ("b", 1.0, b)], _keep_all, 2)) == ["p", "r"]


def test_blend_sums_sources_for_shared_items() -> None:
    per_source = [
        ("a", 1.0, _cands(both=5.0, only_a=10.0, lo=0.0)),
        ("b", 1.0, _cands(both=1.0, lo2=0.0)),
    ]
    ranked = BlendRanking().rank(per_source, _keep_all, 10)
    assert ranked[0].item_id == "both"
    assert ranked[0].score == pytest.approx(1.5)


def test_blend_zero_weight_and_empty_sources_are_skipped() -> None:
    per_source = [("off", 0.0, _cands(x=100.0)), ("none", 1.0, {}), ("on", 1.0, _cands(y=1.0))]
    ranked = BlendRanking().rank(per_source, _keep_all, 10)
    assert _ids(ranked) == ["y"]
    assert BlendRanking().rank([], _keep_all, 10) == []


def test_blend_keep_filter_removes_items() -> None:
    ctx = _ctx(recent=["a"], seen=["b"])
    per_source = [("s", 1.0, _cands(a=5.0, b=4.0, c=3.0, d=2.0))]
    ranked = BlendRanking().rank(per_source, lambda ids: SeenFilter().keep(ctx, ids), 10)
    assert _ids(ranked) == ["c", "d"]


def test_blend_top_k_cuts_and_zero_keeps_all() -> None:
    per_source = [("s", 1.0, _cands(c=5.0, a=4.0, d=3.0, b=2.0))]
    assert _ids(BlendRanking().rank(per_source, _keep_all, 3)) == ["c", "a", "d"]
    assert len(BlendRanking().rank(per_source, _keep_all, 0)) == 4  # 0: no cut (pre-ranking)


def test_blend_ties_broken_by_item_id() -> None:
    """Process-independent: not by the order this process first saw the ids (the
    column-wise rewrite briefly ranked ties by ITEM_IDS row; b62d89e restored this)."""
    # Ids first seen here, in an order that is not theirs: rows are c, a, d, b.
    ids = ["tie-c", "tie-a", "tie-d", "tie-b"]
    per_source = [("s", 1.0, Candidates.of(ids, [5.0] * 4))]
    ranked = BlendRanking().rank(per_source, _keep_all, 3)
    assert all(s.score == pytest.approx(1.0) for s in ranked)  # zero span -> all 1.0
    assert _ids(ranked) == ["tie-a", "tie-b", "tie-c"]


def test_blend_winning_source_has_largest_weighted_contribution() -> None:
    per_source = [
        ("a", 1.0, _explained(x=(6.0, "from-a"), lo=(0.0, None), hi=(10.0, None))),
        ("b", 0.5, _explained(x=(1.0, "from-b"), lo2=(0.0, None))),
    ]
    scored = {s.item_id: s for s in BlendRanking().rank(per_source, _keep_all, 10)}
    x = scored["x"]
    # a contributes 1.0 * 0.6 = 0.6, b contributes 0.5 * 1.0 = 0.5
    assert x.score == pytest.approx(1.1)
    assert x.source == "a"
    assert x.because == "from-a"
    # raise b's weight: b now contributes more and wins, with its evidence item
    per_source[1] = ("b", 0.7, per_source[1][2])
    x = {s.item_id: s for s in BlendRanking().rank(per_source, _keep_all, 10)}["x"]
    assert x.source == "b"
    assert x.because == "from-b"


def test_registries() -> None:
    assert isinstance(RANKINGS.create("blend"), BlendRanking)
    assert isinstance(FILTERS.create("seen"), SeenFilter)
    with pytest.raises(UnknownComponentError, match=r"scorer\.filters"):
        FILTERS.create("nsfw")
    with pytest.raises(UnknownComponentError, match=r"scorer\.name"):
        RANKINGS.create("lambdamart")
    assert {"ann", "profile", "co_click", "trending"} <= set(CANDIDATE_SOURCES.names())


def test_seen_filter() -> None:
    ctx = _ctx(recent=["r"], seen=["s"])
    rows = ITEM_IDS.rows(["r", "s", "new"])
    assert SeenFilter().keep(ctx, rows).tolist() == [False, False, True]
    assert SeenFilter().keep(ctx, rows[:0]).tolist() == []
    # the history alone is enough (a context whose seen set is off: max_seen 0)
    no_seen = _ctx(recent=["r"])
    no_seen.seen = SeenItems()
    assert SeenFilter().keep(no_seen, rows[:2]).tolist() == [False, True]


# ---------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------


def test_explain_because_with_known_title() -> None:
    items = {"h1": _sv("h1", [1.0, 0.0], "Toy Story")}
    reason = explain(Scored("x", 1.0, "co_click", "h1"), _ctx(["h1"]), items)
    assert reason == "because you watched Toy Story"


def test_explain_falls_back_to_source_phrase() -> None:
    ctx = _ctx(["h1"])
    assert explain(Scored("x", 1.0, "trending", None), ctx, {}) == "trending now"
    assert SOURCE_REASONS["trending"] == "trending now"
    # because set but its title unknown -> the source's phrase
    assert explain(Scored("x", 1.0, "co_click", "h1"), ctx, {}) == SOURCE_REASONS["co_click"]
    untitled = {"h1": _sv("h1", [1.0, 0.0])}
    assert explain(Scored("x", 1.0, "trending", "h1"), ctx, untitled) == "trending now"
    assert explain(Scored("x", 1.0, "mystery", None), ctx, {}) == "from mystery"


def test_explain_ann_picks_most_similar_recent_item() -> None:
    items = {
        "h1": _sv("h1", [1.0, 0.0], "Heat"),
        "h2": _sv("h2", [0.0, 1.0], "Toy Story"),
        "x": _sv("x", [0.1, 0.9], "Toy Story 2"),
        "y": _sv("y", [0.95, 0.05], "Ronin"),
    }
    ctx = _ctx(["h1", "h2"])
    assert explain(Scored("x", 1.0, "ann", None), ctx, items) == "because you watched Toy Story"
    assert explain(Scored("y", 1.0, "ann", None), ctx, items) == "because you watched Heat"


def test_explain_ann_without_vectors_uses_phrase() -> None:
    ctx = _ctx(["h1"])
    only_target = {"x": _sv("x", [1.0, 0.0], "X")}
    assert explain(Scored("x", 1.0, "ann", None), ctx, only_target) == "matches your taste"
    only_history = {"h1": _sv("h1", [1.0, 0.0], "Heat")}
    assert explain(Scored("x", 1.0, "ann", None), ctx, only_history) == "matches your taste"


def test_explain_profile_names_the_matching_interest() -> None:
    item = StoredVector(
        "x",
        np.ones(2, np.float32),
        {"title": "Alien", "tags": ["space"], "enrichment": {"keywords": ["horror"]}},
    )
    ctx = _ctx(["h1"], profile_interests=("romantic comedy", "Space opera", "horror"))
    reason = explain(Scored("x", 1.0, "profile", None), ctx, {"x": item})
    assert reason == "matches your interest in Space opera"  # the first that shares a word
    assert matching_interest(("cooking",), item) is None
    assert matching_interest(("space",), None) is None
    # no shared word: the source's phrase, never a wrong interest
    unrelated = _ctx(["h1"], profile_interests=("cooking",))
    assert (
        explain(Scored("x", 1.0, "profile", None), unrelated, {"x": item})
        == (SOURCE_REASONS["profile"])
    )


# ---------------------------------------------------------------------------
# Candidate sources over in-memory views
# ---------------------------------------------------------------------------

#: Unit vectors in 3-d; c is close to the user's vector, f far from it.
VECTORS = {
    "a": [1.0, 0.0, 0.0],
    "b": [0.0, 1.0, 0.0],
    "c": [0.8, 0.6, 0.0],
    "d": [0.0, 0.6, 0.8],
    "e": [0.0, 0.0, 1.0],
    "f": [-1.0, 0.0, 0.0],
}
TITLES = {k: f"Title {k.upper()}" for k in VECTORS}


def _views(graph: MemoryGraph | None = None, now: float = NOW) -> ScorerViews:
    ids = list(VECTORS)
    matrix = np.asarray([VECTORS[i] for i in ids], np.float32)
    index = ExactIndex(3)
    index.upsert(ids, matrix)
    return ScorerViews(
        graph=MemoryGraph() if graph is None else graph,
        items=memory_items(ids, matrix, [{"title": TITLES[i]} for i in ids]),
        search=CatalogSearch(index),
        profiles=MemoryProfiles(),
        clock=FixedClock(now),
    )


def _graph() -> MemoryGraph:
    """b -> d strong, b -> c weak, a -> c; e the most clicked, then d."""
    return MemoryGraph(
        a=ItemState(edges={"c": [1.0, NOW], "b": [1.0, NOW]}, pop=1.0, pop_ts=NOW),
        b=ItemState(edges={"d": [4.0, NOW], "c": [0.5, NOW], "a": [1.0, NOW]}),
        d=ItemState(pop=2.0, pop_ts=NOW),
        e=ItemState(pop=5.0, pop_ts=NOW),
        f=ItemState(pop=0.5, pop_ts=NOW),
    )


def test_ann_source_searches_with_the_user_vector_and_overfetches_for_seen() -> None:
    views = _views()
    source = AnnSource(views, FeatureSpec(), limit=2, max_overfetch=1)
    user = _ctx(["a", "b"], vector=np.array([0.8, 0.6, 0.0], np.float32))
    cold = _ctx(user="cold")
    source.prepare()
    out = source.generate([cold, user])
    assert len(out[0]) == 0  # no vector yet: no candidates, no search for it
    # limit 2 plus one extra (seen 2, capped at max_overfetch 1)
    assert out[1].item_ids() == ["c", "a", "b"]
    assert _items(out[1])["c"] == pytest.approx(1.0) and out[1].because is None
    assert [len(c) for c in source.generate([cold])] == [0]


def test_profile_source_searches_with_the_profile_vector() -> None:
    source = ProfileSource(_views(), FeatureSpec(), limit=1)
    with_profile = _ctx(["a"], profile_vector=np.array([0.0, 0.0, 1.0], np.float32))
    out = source.generate([_ctx(["a"], vector=np.ones(3, np.float32)), with_profile])
    assert len(out[0]) == 0  # a user vector is not a profile
    assert out[1].item_ids() == ["e", "d"]  # limit 1 + one for the seen item


def test_co_click_source_filters_seen_keeps_scores_and_limits() -> None:
    views = _views(_graph())
    source = CoClickSource(views, FeatureSpec(), limit=1)
    assert source.recent_items == FeatureSpec().co_click_recent
    ctx = _ctx(["a", "b"])
    (out,) = source.generate([ctx])
    # b (most recent) -> d 4.0 beats c (0.5 + 1.0 / 2 from a); a is seen
    assert _items(out) == {"d": pytest.approx(4.0)} and _because(out) == {"d": "b"}
    # the full scores (before seen filter and limit) are kept for the ranker's feature
    full = source.last_scores["u"].as_dict()
    assert set(full) == {"a", "b", "c", "d"} and full["c"] == (pytest.approx(1.0), "b")
    limited = CoClickSource(views, FeatureSpec(), limit=5, recent_items=1)
    (only_b,) = limited.generate([ctx])
    assert _items(only_b) == {"d": pytest.approx(4.0), "c": pytest.approx(0.5)}  # b only
    assert _because(only_b) == {"d": "b", "c": "b"}


def test_trending_source_filters_seen_per_user() -> None:
    source = TrendingSource(_views(_graph()), FeatureSpec(), limit=2, refresh_s=3600.0)
    source.prepare()
    out = source.generate([_ctx(["e"]), _ctx([])])
    assert out[0].item_ids() == ["d", "a"]
    assert out[1].item_ids() == ["e", "d"]
    assert _items(out[1])["e"] == pytest.approx(5.0)


def test_trending_list_of_a_young_graph_catches_up_at_once() -> None:
    """A fresh deployment: the first list was made from an empty graph; the next user
    must not wait ``refresh_s`` for trending items that the graph already holds."""
    graph = MemoryGraph()
    views = _views(graph)
    rules = FeatureSpec().graph_rules()

    def top(source: TrendingSource) -> list[str]:
        source.prepare()
        return source.generate([_ctx()])[0].item_ids()

    source = TrendingSource(views, FeatureSpec(), limit=2, refresh_s=3600.0)
    assert top(source) == []
    for item, clicks in (("a", 1), ("b", 3)):
        graph[item] = ItemState()
        for _ in range(clicks):
            rules.add_click(graph[item], NOW)
    assert top(source) == ["b", "a"]
    # A full list (4 x limit items) waits for its refresh, however the graph changes.
    for item in ("c", "d"):
        graph[item] = ItemState()
        rules.add_click(graph[item], NOW, weight=0.5)
    source = TrendingSource(views, FeatureSpec(), limit=1, refresh_s=3600.0)
    assert top(source) == ["b"]
    assert source._ranked.item_ids() == ["b", "a", "c", "d"]
    graph["e"] = ItemState()
    rules.add_click(graph["e"], NOW, weight=10)
    assert top(source) == ["b"]  # e waits for the refresh
    refreshing = TrendingSource(views, FeatureSpec(), limit=1, refresh_s=0.0)
    assert top(refreshing) == ["e"]


# ---------------------------------------------------------------------------
# ScorerWorker.score
# ---------------------------------------------------------------------------


def _recommendation_schema():
    import jsonschema

    from genre.schemas.jsonschema import SCHEMA_DIR

    schema = orjson.loads((SCHEMA_DIR / "Recommendation.json").read_bytes())
    return jsonschema.validators.validator_for(schema)(schema)


def _config(**scorer: object) -> GenreConfig:
    return GenreConfig(encoder={"dim": 3}, scorer={"top_k": 4, **scorer})


def test_score_ranks_filters_and_explains_a_batch() -> None:
    worker = ScorerWorker(_config(), _views(_graph()), "v1")
    assert worker.model_version == "blend+co_click+ann+trending+profile@v1"
    worker.prepare()
    user = _ctx(
        ["a", "b"],
        user="u1",
        vector=np.array([0.8, 0.6, 0.0], np.float32),
        trigger_produced_at=NOW - 0.5,
        taken_at=NOW - 0.4,
        folded_at=NOW - 0.3,
        received_at=NOW - 0.2,
    )
    cold = _ctx(user="u2")
    lists = worker.score([user, cold])
    assert [s.ctx for s in lists] == [user, cold]
    first, second = lists
    assert isinstance(first, ScoredList)
    assert first.items and not {"a", "b"} & set(first.items)  # seen items never listed
    assert len(first.items) <= 4
    assert first.items[0] == "d"  # co-clicked with b and second in trending
    rec = Recommendation.from_bytes(first.value)
    assert rec.user_id == "u1" and rec.trigger_event_id == "e-u1"
    assert rec.model_version == worker.model_version
    assert [i.item_id for i in rec.items] == first.items
    by_id = {i.item_id: i for i in rec.items}
    assert by_id["d"].reason == "because you watched Title B"
    assert by_id["d"].title == "Title D"
    assert by_id["c"].source in ("co_click", "ann")
    assert rec.generated_at == first.generated_at
    assert rec.latency_ms == pytest.approx((first.generated_at - user.trigger_produced_at) * 1e3)
    assert rec.hops == first.hops
    assert set(first.hops) == {"ingest", "fold", "handoff", "wait", "score"}
    assert first.hops["ingest"] == pytest.approx(100.0, abs=0.01)
    assert first.hops["fold"] == pytest.approx(100.0, abs=0.01)
    assert first.hops["handoff"] == pytest.approx(100.0, abs=0.01)
    # The record is built by hand (orjson, not pydantic): it must keep to the public schema.
    for scored in lists:
        errors = list(_recommendation_schema().iter_errors(orjson.loads(scored.value)))
        assert not errors, errors
    # A user without history or vector still gets the trending items.
    assert second.items == ["e", "d", "a", "f"]
    assert {i["reason"] for i in orjson.loads(second.value)["items"]} == {"trending now"}


def test_a_failing_source_degrades_to_the_others() -> None:
    worker = ScorerWorker(_config(), _views(_graph()), "v1")

    def broken(batch: object) -> list:
        raise ConnectionError("qdrant down")

    ann = next(s for s, _ in worker.sources if s.name == "ann")
    ann.generate = broken  # type: ignore[method-assign]
    before = METRICS.fallbacks.labels("source:ann", "ConnectionError")._value.get()
    worker.prepare()
    (scored,) = worker.score([_ctx(["a", "b"], vector=np.ones(3, np.float32))])
    assert scored.items[0] == "d"
    assert {i["source"] for i in orjson.loads(scored.value)["items"]} <= {"co_click", "trending"}
    after = METRICS.fallbacks.labels("source:ann", "ConnectionError")._value.get()
    assert after == before + 1


def test_score_of_an_empty_graph_and_catalogue_gives_empty_lists() -> None:
    views = ScorerViews(
        graph=MemoryGraph(),
        items=memory_items([], np.zeros((0, 3), np.float32), []),
        search=CatalogSearch(ExactIndex(3)),
        profiles=MemoryProfiles(),
        clock=FixedClock(NOW),
    )
    worker = ScorerWorker(_config(), views, "v0")
    worker.prepare()
    (scored,) = worker.score([_ctx(["a"], vector=np.ones(3, np.float32))])
    assert scored.items == [] and orjson.loads(scored.value)["items"] == []


def test_hops_are_milliseconds_between_the_contexts_times_never_negative() -> None:
    ctx = _ctx(trigger_produced_at=100.0, taken_at=100.010, folded_at=100.015, received_at=100.015)
    assert hops(ctx, 100.020, 100.050) == {
        "ingest": pytest.approx(10.0),
        "fold": pytest.approx(5.0),
        "handoff": 0.0,
        "wait": pytest.approx(5.0),
        "score": pytest.approx(30.0),
    }
    skewed = _ctx(trigger_produced_at=200.0, taken_at=199.0, folded_at=199.5, received_at=199.5)
    assert hops(skewed, 199.6, 199.7)["ingest"] == 0.0  # producer clock ahead


# ---------------------------------------------------------------------------
# Latest lists and online hits
# ---------------------------------------------------------------------------


def test_online_hits_count_against_the_list_shown_when_the_user_clicked() -> None:
    def scored(items: list[str], at: float, arm: str | None = None) -> ScoredList:
        return ScoredList(_ctx(), items, b"{}", at, {}, arm)

    assert list_shown_at(None, 100.0) == ([], None)
    first = latest_list_entry(scored(["a", "b"], 100.0, "blend"), None)
    assert first == {"items": ["a", "b"], "at": 100.0, "arm": "blend", "prev": [], "prev_arm": None}
    second = latest_list_entry(scored(["c"], 200.0, "ranker"), first)
    assert list_shown_at(second, 250.0) == (["c"], "ranker")
    assert list_shown_at(second, 200.0) == (["c"], "ranker")
    # Clicked at 150, scored after the 200 list went out: the 100 list was on screen,
    # and its arm gets the click.
    assert list_shown_at(second, 150.0) == (["a", "b"], "blend")
    assert list_shown_at(second, 50.0) == (["a", "b"], "blend")  # the oldest we keep
    third = latest_list_entry(scored(["d"], 300.0), second)
    assert third["prev"] == ["c"]  # only one list back is kept


# ---------------------------------------------------------------------------
# The learned ranker's path (a stand-in ranker: the scorer's side of the contract)
# ---------------------------------------------------------------------------


class _FakeRanker:
    """Scores a candidate by its trending feature; attends to the oldest history item."""

    version = "r1/fp32"
    history_len = 4

    def __init__(self, feature_names: tuple[str, ...] = ("trending", "co_click")) -> None:
        from types import SimpleNamespace

        self.manifest = SimpleNamespace(
            feature_names=list(feature_names),
            feature_spec=FeatureSpec().as_manifest(),
            training={},
        )
        self.reps = {"a": np.ones(2, np.float32)}  # cached already
        self.encoded: list[str] = []
        self.calls: list[tuple] = []
        self.fail = False

    def cached_reps(self, ids: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        return {i: self.reps[i] for i in ids if i in self.reps}, [
            i for i in ids if i not in self.reps
        ]

    def encode_items(self, ids: list[str], text: np.ndarray) -> dict[str, np.ndarray]:
        assert text.shape == (len(ids), 3)
        self.encoded.extend(ids)
        out = {i: np.full(2, 0.5, np.float32) for i in ids}
        self.reps.update(out)
        return out

    def score(self, histories, candidates, features, reps):
        from genre.workers.ranker import RankerOutput

        if self.fail:
            raise RuntimeError("onnxruntime: bad input")
        self.calls.append((histories, candidates, features.copy()))
        b, c = len(histories), features.shape[1]
        h = max(1, max(len(x) for x in histories))
        attention = np.zeros((b, c, h), np.float32)
        for i, hist in enumerate(histories):
            if hist:
                attention[i, :, h - len(hist)] = 1.0  # the oldest item of the history
        return RankerOutput(features[..., 0].astype(np.float32), attention)


def _ranked_worker(ranker: _FakeRanker, **scorer: object) -> ScorerWorker:
    from types import SimpleNamespace

    config = GenreConfig(
        encoder={"dim": 3}, scorer={"top_k": 2, **scorer}, ranker={"rank_candidates": 3}
    )
    worker = ScorerWorker(config, _views(_graph()), "v1", SimpleNamespace(current=ranker))  # type: ignore[arg-type]
    worker.prepare()
    return worker


def test_the_learned_ranker_reranks_the_best_of_the_blend() -> None:
    ranker = _FakeRanker()
    worker = _ranked_worker(ranker)
    ctx = _ctx(["a", "b"], vector=np.array([0.8, 0.6, 0.0], np.float32))
    (scored,) = worker.score([ctx])
    ((histories, candidates, features),) = ranker.calls
    assert histories == [["a", "b"]]
    (cands,) = candidates
    # rank_candidates (3) of the blend, never a seen item; missing reps encoded once
    assert len(cands) == 3 and not {"a", "b"} & set(cands)
    assert set(ranker.encoded) == {"b", *cands}
    # features: the manifest's names in order, by the shared code (trending, co_click)
    popularity = {"c": 0.0, "d": 2.0, "e": 5.0, "f": 0.5}
    co_click = {"c": 1.0, "d": 4.0}
    expected = [[popularity[c], co_click.get(c, 0.0)] for c in cands]
    np.testing.assert_allclose(features[0, : len(cands)], expected, rtol=1e-6)
    # top_k by the ranker's scores (trending here), explained by its attention
    by_trending = sorted(cands, key=lambda c: -popularity[c])[:2]
    assert scored.items == by_trending
    rec = orjson.loads(scored.value)
    assert rec["model_version"] == "ranker@r1/fp32+co_click+ann+trending+profile"
    assert {i["reason"] for i in rec["items"]} == {"because you watched Title A"}


def test_a_failing_ranker_falls_back_to_the_blend() -> None:
    ranker = _FakeRanker()
    ranker.fail = True
    worker = _ranked_worker(ranker)
    before = METRICS.fallbacks.labels("ranker", "RuntimeError")._value.get()
    (scored,) = worker.score([_ctx(["a", "b"], vector=np.array([0.8, 0.6, 0.0], np.float32))])
    assert METRICS.fallbacks.labels("ranker", "RuntimeError")._value.get() == before + 1
    assert orjson.loads(scored.value)["model_version"] == worker.model_version
    assert scored.items[0] == "d"  # the blend's first


def test_a_ranker_with_features_this_worker_lacks_is_refused() -> None:
    from genre.schemas.manifest import ManifestError
    from genre.workers.scorer import check_ranker_features

    ranker = _FakeRanker()
    ranker.manifest.feature_names = ["trending", "dwell_time"]
    with pytest.raises(ManifestError, match="dwell_time"):
        _ranked_worker(ranker)
    check_ranker_features(_FakeRanker(), GenreConfig())  # type: ignore[arg-type]
