"""The graph model's embeddings as a retrieval index, their fold-in, and the graph source."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from genre.core.features import FeatureSpec, ItemState
from genre.core.features.graph_embedding import (
    GraphEmbeddings,
    load_graph_embeddings,
    save_graph_embeddings,
)
from genre.core.features.ids import ITEM_IDS
from genre.streams.views import FixedClock, MemoryGraph, MemoryProfiles, ScorerViews
from genre.workers.candidates import GraphSource

NOW = 1_700_000_000.0
DAY = 86400.0


def _embeddings() -> GraphEmbeddings:
    # g-a and g-b point one way, g-c the other; g-d is between.
    vectors = [[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]]
    return GraphEmbeddings.of(["g-a", "g-b", "g-c", "g-d"], np.asarray(vectors))


def test_query_is_the_mean_of_the_recent_embedded_items() -> None:
    emb = _embeddings()
    np.testing.assert_allclose(emb.query(["g-c", "g-a", "g-d"], recent=2), [0.5, 0.5])
    # Items without an embedding are skipped; none at all gives no query.
    np.testing.assert_allclose(emb.query(["g-new", "g-a"], recent=2), [1.0, 0.0])
    assert emb.query(["g-new"], recent=5) is None
    assert emb.query([], recent=5) is None


def test_search_returns_the_best_dot_products_in_order() -> None:
    emb = _embeddings()
    (rows, scores), (rows2, _) = emb.search(np.asarray([[1.0, 0.0], [0.0, 1.0]]), k=3)
    assert [ITEM_IDS.names[r] for r in rows] == ["g-a", "g-b", "g-d"]
    np.testing.assert_allclose(scores, [1.0, 0.9, 0.0])
    assert ITEM_IDS.names[rows2[0]] == "g-d"
    ((everything, _),) = emb.search(np.asarray([[1.0, 0.0]]), k=10)
    assert len(everything) == 4


def test_fold_in_is_the_decayed_weighted_mean_of_trained_neighbours() -> None:
    emb = _embeddings()
    graph = MemoryGraph(
        # g-new: co-clicked with g-a (weight 1, now) and g-c (weight 2, one half-life ago),
        # and with g-other, which has no trained embedding (ignored).
        **{
            "g-new": ItemState(
                edges={"g-a": [1.0, NOW], "g-c": [2.0, NOW - DAY], "g-other": [5.0, NOW]}
            ),
            "g-other": ItemState(edges={"g-new": [5.0, NOW]}),
            "g-a": ItemState(edges={"g-new": [1.0, NOW]}),
        }
    )
    folded = emb.with_fold_ins(["g-new", "g-other", "g-a"], graph.get, NOW, DAY)
    assert folded.trained == 4 and len(folded) == 5  # g-other: no trained neighbour
    assert emb.is_trained(ITEM_IDS.row("g-a")) and not folded.is_trained(ITEM_IDS.row("g-new"))
    # weights 1 and 2 * 1/2 = 1: the plain mean of g-a and g-c
    np.testing.assert_allclose(folded.vectors[-1], [0.0, 0.0], atol=1e-7)
    later = emb.with_fold_ins(["g-new"], graph.get, NOW + DAY, DAY)
    # a day on, both edges halve again: still equal weights
    np.testing.assert_allclose(later.vectors[-1], [0.0, 0.0], atol=1e-7)
    assert emb.with_fold_ins(["g-new"], graph.get, NOW, DAY, min_neighbours=3) is emb
    # A new item is retrievable once folded in: it now answers a query towards g-a.
    ((rows, _),) = emb.with_fold_ins(
        ["g-new"], MemoryGraph(**{"g-new": ItemState(edges={"g-a": [1.0, NOW]})}).get, NOW, DAY
    ).search(np.asarray([[1.0, 0.0]]), k=2)
    assert ITEM_IDS.names[rows[0]] in ("g-a", "g-new") and ITEM_IDS.row("g-new") in rows.tolist()


def test_embeddings_round_trip_and_a_missing_folder_says_what_to_run(tmp_path: Path) -> None:
    folder = tmp_path / "graph"
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    save_graph_embeddings(folder, ["g-x", "g-y", "g-z"], vectors, {"model": "lightgcn"})
    loaded, info = load_graph_embeddings(folder)
    assert info == {"items": 3, "dim": 2, "model": "lightgcn"}
    np.testing.assert_array_equal(loaded.vectors, vectors)
    assert [ITEM_IDS.names[r] for r in loaded.rows] == ["g-x", "g-y", "g-z"]
    with pytest.raises(FileNotFoundError, match="genre train --model graph"):
        load_graph_embeddings(tmp_path / "nothing")
    with pytest.raises(ValueError, match="must be"):
        GraphEmbeddings.of(["g-x"], vectors)


def _ctx(history: list[str], user: str = "u"):
    from genre.core.features.ids import SeenItems
    from genre.streams.score_context import ScoreContext

    return ScoreContext(
        user_id=user,
        trigger_event_id="e",
        trigger_produced_at=NOW,
        trigger_ts=NOW,
        history=tuple(history),
        seen=SeenItems.of(history),
        clicks=len(history),
        vector=None,
    )


def test_graph_source_retrieves_folds_in_and_reloads(tmp_path: Path) -> None:
    folder = tmp_path / "graph"
    emb = _embeddings()
    save_graph_embeddings(
        folder, [ITEM_IDS.names[r] for r in emb.rows], emb.vectors, {"model": "test"}
    )
    graph = MemoryGraph(**{"g-new": ItemState(edges={"g-b": [1.0, NOW]})})
    views = ScorerViews(
        graph=graph, items=None, search=None, profiles=MemoryProfiles(), clock=FixedClock(NOW)
    )  # type: ignore[arg-type]
    source = GraphSource(views, FeatureSpec(), limit=2, dir=str(folder), refresh_s=0.0)
    source.prepare()
    (out, cold) = source.generate([_ctx(["g-a"]), _ctx(["g-unknown"], user="v")])
    # g-a's own row comes back (seen; the scorer filters) plus limit 2: over-fetch of 1
    names = out.item_ids()
    assert len(names) == 3 and names[0] == "g-a" and "g-new" in names  # folded in
    assert len(cold) == 0
    # A new training run is picked up on the next refresh.
    moved = np.asarray([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]], np.float32)
    save_graph_embeddings(folder, ["g-a", "g-b", "g-c", "g-d"], moved, {"model": "test2"})
    path = folder / "embeddings.npz"
    stamp = path.stat().st_mtime + 10
    os.utime(path, (stamp, stamp))
    source.prepare()
    assert source.info["model"] == "test2"
    (out,) = source.generate([_ctx(["g-d"])])
    assert out.item_ids()[0] == "g-d" and not math.isnan(float(out.scores[0]))
    with pytest.raises(FileNotFoundError, match="genre train --model graph"):
        GraphSource(views, FeatureSpec(), limit=2, dir=str(tmp_path / "none"))
