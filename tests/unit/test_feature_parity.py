"""One click log, folded by the live stream code and by the training replay: same features.

The stream side is what the workers run: ``streams.fold.Fold`` over micro-batches,
the co-click evidence through its wire records (``CoClicks``) into the graph
agent's ``apply_evidence``, and the scorer's ``candidate_features``. The replay
side is ``model_export.replay.StreamReplay``. The log puts every rule that once
differed between the two in play: pruning to ``max_neighbours``, click weights
by kind, re-clicks (the history moves the item to its end) and re-sent events.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from genre.core.features import (
    CoClickEvidence,
    FeatureSpec,
    ItemState,
    apply_evidence,
    candidate_features,
)
from genre.model_export.replay import StreamReplay, build_interactions
from genre.schemas import ClickEvent, CoClicks, ItemUpsert
from genre.streams.fold import Click, Fold

T0 = 1_700_000_000.0
KINDS = ("click", "view", "purchase", "rate")

SPEC = FeatureSpec(
    max_neighbours=4,  # pruned at 5 edges: the popular items hit it constantly
    co_click_window=3,
    co_click_recent=4,
    history_size=6,  # re-clicks and trimming both change the history
    history_len=6,
    max_seen=9,
    dedup_window=5,
    edge_half_life_s=3_000.0,
    trending_half_life_s=900.0,
    click_weights={"click": 1.0, "view": 0.25, "purchase": 4.0, "rate": 1.5},
    user_vector_params={"half_life_s": 1_200.0},
    feature_names=("trending", "co_click", "profile"),
)


def _log(
    seed: int = 3, n_items: int = 14, n_users: int = 6
) -> tuple[list[ItemUpsert], list[ClickEvent], np.ndarray]:
    rng = np.random.default_rng(seed)
    items = [ItemUpsert(item_id=f"i{k}", title=f"Item {k}", ts=T0) for k in range(n_items)]
    vectors = rng.normal(size=(n_items, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    popular = np.arange(1, n_items + 1, dtype=float) ** -1.0
    popular /= popular.sum()
    events: list[ClickEvent] = []
    ts = T0
    for n in range(420):
        ts += float(rng.integers(1, 90))
        user = f"u{rng.integers(n_users)}"
        item = f"i{rng.choice(n_items, p=popular)}"
        kind = KINDS[int(rng.integers(len(KINDS)))]
        events.append(ClickEvent(event_id=f"e{n}", user_id=user, item_id=item, type=kind, ts=ts))
        if n % 37 == 0:  # a re-sent event: same id, a moment later
            events.append(events[-1].model_copy(update={"ts": ts + 0.5}))
            ts += 0.5
    return items, events, vectors


def _stream_side(
    items: list[ItemUpsert], events: list[ClickEvent], vectors: np.ndarray, batch: int
) -> tuple[dict, dict[str, ItemState], int]:
    fold = Fold(SPEC)
    rules = SPEC.graph_rules()
    users: dict = {}
    graph: dict[str, ItemState] = {}
    by_id = {it.item_id: vectors[k] for k, it in enumerate(items)}
    duplicates = 0
    ordered = sorted(events, key=lambda e: e.ts)
    for start in range(0, len(ordered), batch):
        part = ordered[start : start + batch]
        clicks = [Click(ev, ev.ts, "clicks", 0, start + k) for k, ev in enumerate(part)]
        result = fold(clicks, users, by_id)
        users.update(result.states)
        duplicates += result.duplicates
        # Through the wire, as the graph agent receives it.
        wire = CoClicks.encode(
            [[e.item_id, list(e.neighbours), e.clicks, e.ts] for e in result.evidence]
        )
        evidence = [
            CoClickEvidence(item, tuple(nbrs), clicks, ts)
            for item, nbrs, clicks, ts in CoClicks.from_trusted_bytes(wire)
        ]
        graph.update(apply_evidence(rules, evidence, graph.get))
    return users, graph, duplicates


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_stream_and_replay_fold_to_the_same_state_and_features(batch: int) -> None:
    items, events, vectors = _log()
    users, graph, duplicates = _stream_side(items, events, vectors, batch)
    assert duplicates >= 10  # re-sent events were in play

    data = build_interactions(items, events)
    replay = StreamReplay(data, replace(SPEC, feature_names=("trending", "co_click")), vectors)
    for _ in replay.run():
        pass

    # The rules were really in play: pruning, re-clicks, weighted kinds.
    assert max(len(s.edges) for s in graph.values()) <= SPEC.max_neighbours * 1.25
    assert sum(len(s.edges) == SPEC.max_neighbours for s in graph.values()) >= 3
    assert not data.query.all()  # re-clicks and re-sends are folded, never predicted

    # Same item graph.
    assert set(graph) == set(replay.graph)
    for item, state in graph.items():
        assert replay.graph[item] == state, item
    # Same user states.
    for u, user_id in enumerate(data.user_ids):
        mine, theirs = users[user_id], replay.users[u]
        assert mine.history == theirs.history
        assert list(mine.seen) == list(theirs.seen)
        assert mine.clicks == theirs.clicks
        np.testing.assert_array_equal(mine.vector, theirs.vector)

    # Same ranker features: the scorer's code on the stream's state, the replay's.
    now = float(data.ts[-1]) + 60.0
    profile = vectors[2]
    candidates = np.arange(data.n_items)
    ids = [data.item_ids[c] for c in candidates]
    for u, user_id in enumerate(data.user_ids):
        served = candidate_features(
            SPEC,
            SPEC.graph_rules(),
            graph.get,
            ids,
            now,
            history=tuple(users[user_id].history),
            candidate_vectors=vectors[candidates],
            profile=profile,
        )
        trained = candidate_features(
            SPEC,
            replay.graph_rules,
            replay.graph.get,
            ids,
            now,
            history=replay.users[u].history,
            candidate_vectors=vectors[candidates],
            profile=profile,
        )
        np.testing.assert_array_equal(served, trained)
        assert served[:, 1].any(), "co-click scores are in play"
        # The replay's dense path (full ranking) agrees with its per-candidate path.
        dense = replay.features(u, slice(None), now)
        np.testing.assert_allclose(dense, replay.features(u, candidates, now), rtol=1e-6)


@pytest.mark.parametrize("with_graph", [False, True], ids=["blend", "blend+graph"])
def test_the_evaluation_pre_ranks_the_candidates_the_scorer_would(
    with_graph: bool, tmp_path: Path
) -> None:
    """The evaluation's replay of the candidate sources and blend (``StreamReplay.prerank``)
    picks the same items as the live scorer's blend over its real sources; with the graph
    model's source too, whose embeddings cover only part of the catalogue, so items are
    folded in from the live graph on both sides."""
    from genre.core.config import GenreConfig
    from genre.core.exact_index import ExactIndex
    from genre.core.features.candidates import source_specs
    from genre.core.features.graph_embedding import (
        load_graph_embeddings,
        save_graph_embeddings,
    )
    from genre.model_export.replay import CandidatePlan
    from genre.streams.score_context import context_of
    from genre.streams.views import (
        CatalogSearch,
        FixedClock,
        MemoryGraph,
        MemoryProfiles,
        ScorerViews,
        memory_items,
    )
    from genre.workers.scorer import ScorerWorker

    top = 12
    streams = {"max_neighbours": 6, "co_click_window": 3, "history_size": 8, "max_seen": 20}
    scorer = {
        "top_k": top,
        "candidates": [
            {"name": "co_click", "weight": 1.0, "limit": 9},
            {"name": "ann", "weight": 0.5, "limit": 5, "params": {"max_overfetch": 4}},
            {"name": "trending", "weight": 0.5, "limit": 4},
        ],
    }
    items, events, vectors = _log(seed=5, n_items=80, n_users=10)
    graph_plan = None
    if with_graph:
        folder = tmp_path / "graph"
        trained = [it.item_id for it in items[:50]]  # the other 30 arrive "after training"
        embedding = np.random.default_rng(3).standard_normal((len(trained), 8))
        save_graph_embeddings(folder, trained, embedding, {"model": "test"})
        graph_plan, _ = load_graph_embeddings(folder)
        source = {"name": "graph", "weight": 0.7, "limit": 6, "params": {"dir": str(folder)}}
        scorer["candidates"].append(source)  # type: ignore[attr-defined]
    config = GenreConfig(streams=streams, scorer=scorer)
    spec = FeatureSpec.from_streams(config.streams)
    fold = Fold(spec)
    users: dict = {}
    graph = MemoryGraph()
    rules = spec.graph_rules()
    ordered = sorted(events, key=lambda e: e.ts)
    by_id = {it.item_id: vectors[k] for k, it in enumerate(items)}
    result = fold([Click(ev, ev.ts, "c", 0, k) for k, ev in enumerate(ordered)], users, by_id)
    users.update(result.states)
    graph.update(apply_evidence(rules, result.evidence, graph.get))

    data = build_interactions(items, events)
    replay = StreamReplay(data, spec, vectors)
    for _ in replay.run():
        pass
    now = float(data.ts[-1]) + 30.0
    ids = [it.item_id for it in items]
    index = ExactIndex(vectors.shape[1])
    index.upsert(ids, vectors)
    views = ScorerViews(
        graph,
        memory_items(ids, vectors, [{} for _ in ids]),
        CatalogSearch(index),
        MemoryProfiles(),
        FixedClock(now),
    )
    worker = ScorerWorker(config, views, "test")
    worker.prepare()
    contexts = [
        context_of(
            users[u],
            user_id=u,
            event_id="x",
            produced_at=now,
            ts=now,
            clicked_items=(),
            taken_at=now,
            folded_at=now,
        )
        for u in data.user_ids
    ]
    lists = worker.score(contexts)
    plan = CandidatePlan(source_specs(config.scorer), top, graph=graph_plan)
    if with_graph:
        (graph_source,) = [s for s, _ in worker.sources if s.name == "graph"]
        assert len(graph_source.embeddings) > graph_source.embeddings.trained  # fold-ins
    compared = 0
    for u, scored in enumerate(lists):
        blend_scores, chosen = replay.prerank(u, now, plan)
        assert {data.item_ids[i] for i in np.flatnonzero(chosen)} == set(scored.items)
        served = orjson.loads(scored.value)["items"]
        for entry in served:
            k = data.item_ids.index(entry["item_id"])
            assert blend_scores[k] == pytest.approx(entry["score"], abs=1e-6)
        compared += len(served)
    assert compared >= len(lists) * (top - 2)
