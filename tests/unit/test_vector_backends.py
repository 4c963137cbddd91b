"""One contract for every vector backend: qdrant-client local mode, Qdrant Edge, ExactIndex.

The Qdrant server path is QdrantStore with a URL: the same class as local mode,
so the local-mode cases below pin the behaviour it shares. ExactIndex has only
upsert / delete / search_batch / load; the cases that need more skip it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import genre.core.exact_index as exact_module
from genre.core.config import ConfigError, load_config
from genre.core.exact_index import ExactIndex
from genre.core.vectorstore import (
    EdgeStore,
    Hit,
    QdrantStore,
    StoredVector,
    VectorStoreError,
    open_vector_store,
    point_id,
)

DIM = 16
NAME = "items"


class ExactAsStore:
    """ExactIndex behind the store calls it has; one collection, no payloads."""

    def __init__(self, dim: int) -> None:
        self.index = ExactIndex(dim, capacity=4)  # small: upserts must grow it

    def ensure_collection(self, name: str, dim: int) -> None:
        assert dim == self.index.dim

    def upsert(self, name: str, ids: list[str], vectors: Any, payloads: list[dict]) -> None:
        self.index.upsert(ids, vectors)

    def delete(self, name: str, ids: list[str]) -> None:
        self.index.delete(ids)

    def search_batch(self, name: str, vectors: Any, limit: int) -> list[list[Hit]]:
        return self.index.search_batch(vectors, limit)

    def close(self) -> None:
        pass


BACKENDS = ["local", "edge", "exact"]


def _open(kind: str, path: Path) -> Any:
    if kind == "local":
        return QdrantStore(path=str(path / "local"))
    if kind == "edge":
        pytest.importorskip("qdrant_edge")
        return EdgeStore(path=str(path / "edge"))
    return ExactAsStore(DIM)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = _open(request.param, tmp_path)
    s.ensure_collection(NAME, DIM)
    yield s
    s.close()


def _needs_store(store: Any) -> None:
    if isinstance(store, ExactAsStore):
        pytest.skip("ExactIndex has no retrieve / scroll / count / payloads")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def data() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(120, DIM)).astype(np.float32) * 3.0  # not unit: stores normalise
    return [f"item-{n}" for n in range(len(vectors))], vectors


def _ids(hits: list[Hit]) -> list[str]:
    return [h.id for h in hits]


# ---------------------------------------------------------------------------
# Search: order and scores equal numpy's exact cosine
# ---------------------------------------------------------------------------


def test_search_order_and_scores_match_numpy(store: Any, data: tuple) -> None:
    ids, vectors = data
    store.upsert(NAME, ids, vectors, [{"n": i} for i in range(len(ids))])
    queries = np.random.default_rng(4).normal(size=(6, DIM)).astype(np.float32)
    got = store.search_batch(NAME, queries, 15)
    sims = _unit(queries) @ _unit(vectors).T  # [6, 120]
    assert len(got) == len(queries)
    for row, hits in zip(sims, got, strict=True):
        best = np.argsort(-row)[:15]
        assert _ids(hits) == [ids[i] for i in best]
        assert np.allclose([h.score for h in hits], row[best], atol=1e-5)


def test_limit_above_size_returns_everything_sorted(store: Any, data: tuple) -> None:
    ids, vectors = data
    store.upsert(NAME, ids[:5], vectors[:5], [{}] * 5)
    hits = store.search_batch(NAME, vectors[:1], 50)[0]
    assert sorted(_ids(hits)) == sorted(ids[:5])
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert hits[0].id == ids[0]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_search_hits_carry_only_the_id_payload(store: Any, data: tuple) -> None:
    _needs_store(store)
    ids, vectors = data
    store.upsert(NAME, ids[:3], vectors[:3], [{"title": "x", "id": "spoofed"}] * 3)
    hits = store.search_batch(NAME, vectors[1:2], 3)[0]
    assert [h.payload for h in hits] == [{"id": h.id} for h in hits]
    assert hits[0].id == ids[1]


@pytest.mark.parametrize(("block_rows", "tile"), [(7, 3), (16, 4), (50, 256)])
def test_exact_index_blocked_scan_matches_numpy(
    monkeypatch: pytest.MonkeyPatch, block_rows: int, tile: int
) -> None:
    """Small blocks and tiles drive ExactIndex's threshold scan through every branch."""
    monkeypatch.setattr(exact_module, "_BLOCK_ROWS", block_rows)
    monkeypatch.setattr(exact_module, "_TILE", tile)
    rng = np.random.default_rng(block_rows)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    ids = [f"i{n}" for n in range(300)]
    index = ExactIndex(DIM, capacity=2)
    index.upsert(ids, vectors)
    gone = set(rng.choice(ids, size=120, replace=False).tolist())
    index.delete(gone)
    alive = [n for n in range(300) if ids[n] not in gone]
    queries = rng.normal(size=(9, DIM)).astype(np.float32)
    for limit in (1, 10, 200):
        got = index.search_batch(queries, limit)
        sims = _unit(queries) @ _unit(vectors[alive]).T
        for row, hits in zip(sims, got, strict=True):
            best = np.argsort(-row)[:limit]
            assert _ids(hits) == [ids[alive[i]] for i in best]
            assert np.allclose([h.score for h in hits], row[best], atol=1e-5)


# ---------------------------------------------------------------------------
# Writes: round trip, replace, delete
# ---------------------------------------------------------------------------


def test_upsert_then_retrieve_round_trip(store: Any, data: tuple) -> None:
    _needs_store(store)
    ids, vectors = data
    payloads = [{"title": f"t{i}", "tags": ["a", "b"], "pop": i * 0.5} for i in range(4)]
    payloads[0]["id"] = "spoofed"  # the payload's id field is always our id
    store.upsert(NAME, ids[:4], vectors[:4], payloads)
    got = store.retrieve(NAME, [ids[2], ids[0], "absent"])
    assert set(got) == {ids[0], ids[2]}
    for i in (0, 2):
        stored = got[ids[i]]
        assert isinstance(stored, StoredVector)
        assert stored.id == ids[i]
        assert stored.vector.dtype == np.float32
        assert np.allclose(stored.vector, _unit(vectors[i]), atol=1e-6)
        assert stored.payload == {**payloads[i], "id": ids[i]}


def test_re_upsert_replaces_vector_and_payload(store: Any, data: tuple) -> None:
    ids, vectors = data
    store.upsert(NAME, ids[:3], vectors[:3], [{"old": True, "keep": 1}] * 3)
    store.upsert(NAME, [ids[0]], vectors[5:6], [{"new": True}])
    # Searching with item 5's vector finds item 0 (its new vector) with score 1.
    top = store.search_batch(NAME, vectors[5:6], 1)[0][0]
    assert top.id == ids[0]
    assert top.score == pytest.approx(1.0, abs=1e-5)
    if isinstance(store, ExactAsStore):
        return
    assert store.count(NAME) == 3
    got = store.retrieve(NAME, [ids[0]])[ids[0]]
    assert got.payload == {"new": True, "id": ids[0]}  # replaced, not merged
    assert np.allclose(got.vector, _unit(vectors[5]), atol=1e-6)


def test_duplicate_ids_in_one_upsert_last_wins(store: Any, data: tuple) -> None:
    _, vectors = data
    store.upsert(NAME, ["d", "d"], vectors[:2], [{"v": 1}, {"v": 2}])
    hits = store.search_batch(NAME, vectors[1:2], 5)[0]
    assert _ids(hits) == ["d"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    if not isinstance(store, ExactAsStore):
        assert store.retrieve(NAME, ["d"])["d"].payload == {"v": 2, "id": "d"}


def test_delete_removes_and_ignores_unknown_ids(store: Any, data: tuple) -> None:
    ids, vectors = data
    store.upsert(NAME, ids[:10], vectors[:10], [{}] * 10)
    store.delete(NAME, [ids[3], ids[7], "never-there"])
    hits = store.search_batch(NAME, vectors[3:4], 20)[0]
    assert sorted(_ids(hits)) == sorted(set(ids[:10]) - {ids[3], ids[7]})
    store.upsert(NAME, [ids[3]], vectors[3:4], [{}])  # a deleted id can come back
    assert store.search_batch(NAME, vectors[3:4], 1)[0][0].id == ids[3]
    if not isinstance(store, ExactAsStore):
        assert store.count(NAME) == 9
        assert set(store.retrieve(NAME, [ids[3], ids[7]])) == {ids[3]}


# ---------------------------------------------------------------------------
# Reads: scroll, count, missing collections
# ---------------------------------------------------------------------------


def test_scroll_returns_every_point_across_pages(store: Any, data: tuple) -> None:
    _needs_store(store)
    ids, vectors = data
    store.upsert(NAME, ids[:23], vectors[:23], [{"n": i} for i in range(23)])
    items = list(store.scroll(NAME, page=5))
    assert len(items) == 23
    by_id = {s.id: s for s in items}
    assert set(by_id) == set(ids[:23])
    for i in (0, 11, 22):
        assert by_id[ids[i]].payload == {"n": i, "id": ids[i]}
        assert np.allclose(by_id[ids[i]].vector, _unit(vectors[i]), atol=1e-6)
    # ExactIndex loads a scroll: the same answers as the store it came from.
    index = ExactIndex(DIM)
    assert index.load(store.scroll(NAME, page=4)) == 23
    q = vectors[30:33]
    assert [_ids(h) for h in index.search_batch(q, 7)] == [
        _ids(h) for h in store.search_batch(NAME, q, 7)
    ]


def test_count_and_missing_collections(store: Any, data: tuple) -> None:
    _needs_store(store)
    ids, vectors = data
    assert store.count(NAME) == 0
    store.upsert(NAME, ids[:12], vectors[:12], [{}] * 12)
    assert store.count(NAME) == 12
    assert store.count("absent") == 0
    assert list(store.scroll("absent")) == []
    with pytest.raises((VectorStoreError, ValueError), match="absent"):
        store.search_batch("absent", vectors[:1], 3)


def test_point_ids_are_uuid5_of_our_ids(store: Any, data: tuple) -> None:
    """String ids map to the same UUID point ids in every Qdrant backend."""
    _needs_store(store)
    ids, vectors = data
    store.upsert(NAME, ids[:2], vectors[:2], [{}, {}])
    want = point_id(ids[1])
    assert uuid.UUID(want).version == 5
    if isinstance(store, QdrantStore):
        records = store.client.retrieve(NAME, ids=[want])
    else:
        records = store._open(NAME).retrieve([want], with_payload=True, with_vector=False)
    assert [str(r.id) for r in records] == [want]
    assert records[0].payload == {"id": ids[1]}


# ---------------------------------------------------------------------------
# Errors and empty inputs
# ---------------------------------------------------------------------------


def test_dimension_mismatch_is_a_clear_error(store: Any, data: tuple) -> None:
    ids, vectors = data
    store.upsert(NAME, ids[:2], vectors[:2], [{}, {}])
    with pytest.raises(VectorStoreError, match=f"holds {DIM}-d vectors"):
        store.upsert(NAME, ["x"], np.ones((1, DIM + 1), np.float32), [{}])
    with pytest.raises(VectorStoreError, match=f"holds {DIM}-d vectors"):
        store.search_batch(NAME, np.ones((2, DIM - 1), np.float32), 3)
    with pytest.raises(VectorStoreError, match="search limit must be 1 or more, got 0"):
        store.search_batch(NAME, vectors[:1], 0)
    if not isinstance(store, ExactAsStore):
        with pytest.raises(VectorStoreError) as err:
            store.ensure_collection(NAME, DIM + 8)
        assert f"holds {DIM}-d vectors but the encoder makes {DIM + 8}-d ones" in str(err.value)
        store.ensure_collection(NAME, DIM)  # the right dimension is fine
        assert store.count(NAME) == 2


def test_empty_inputs_are_no_ops(store: Any, data: tuple) -> None:
    ids, vectors = data
    empty = np.zeros((0, DIM), np.float32)
    assert store.search_batch(NAME, vectors[:3], 5) == [[], [], []]  # empty collection
    store.upsert(NAME, [], empty, [])
    store.delete(NAME, [])
    assert store.search_batch(NAME, empty, 5) == []
    store.upsert(NAME, ids[:2], vectors[:2], [{}, {}])
    assert store.search_batch(NAME, empty, 5) == []
    assert len(store.search_batch(NAME, vectors[:1], 5)[0]) == 2
    if not isinstance(store, ExactAsStore):
        assert store.retrieve(NAME, []) == {}
        assert store.count(NAME) == 2


# ---------------------------------------------------------------------------
# Persistence and configuration of the embedded engines
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "edge"])
def test_data_survives_reopen(kind: str, tmp_path: Path, data: tuple) -> None:
    ids, vectors = data
    s = _open(kind, tmp_path)
    s.ensure_collection(NAME, DIM)
    s.upsert(NAME, ids[:8], vectors[:8], [{"n": i} for i in range(8)])
    s.delete(NAME, [ids[0]])
    s.close()
    s = _open(kind, tmp_path)
    try:
        assert s.count(NAME) == 7
        assert s.retrieve(NAME, [ids[5]])[ids[5]].payload == {"n": 5, "id": ids[5]}
        assert s.search_batch(NAME, vectors[4:5], 1)[0][0].id == ids[4]
    finally:
        s.close()


def test_edge_folder_is_held_by_one_store(tmp_path: Path) -> None:
    pytest.importorskip("qdrant_edge")
    first = EdgeStore(path=str(tmp_path))
    first.ensure_collection(NAME, DIM)
    second = EdgeStore(path=str(tmp_path))
    try:
        with pytest.raises(VectorStoreError, match="One process at a time may hold the folder"):
            second.ensure_collection(NAME, DIM)
    finally:
        first.close()
    second.ensure_collection(NAME, DIM)  # free once the first one closed
    second.close()


def test_edge_rejects_path_like_collection_names(tmp_path: Path) -> None:
    pytest.importorskip("qdrant_edge")
    s = EdgeStore(path=str(tmp_path))
    with pytest.raises(VectorStoreError, match="invalid collection name"):
        s.ensure_collection("../outside", DIM)
    s.close()


def test_config_engine_picks_the_backend(tmp_path: Path) -> None:
    env = {"GENRE_DATA_DIR": str(tmp_path)}
    assert load_config(environ=env).qdrant.engine == "local"
    local = open_vector_store(load_config(environ=env))
    assert isinstance(local, QdrantStore)
    local.close()
    pytest.importorskip("qdrant_edge")
    edge = open_vector_store(load_config(environ={**env, "GENRE_QDRANT__ENGINE": "edge"}))
    assert isinstance(edge, EdgeStore)
    assert edge.root == tmp_path / "qdrant" / "edge"
    edge.close()


def test_config_rejects_unknown_engine() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={"GENRE_QDRANT__ENGINE": "faiss"})
    text = str(err.value)
    assert "qdrant.engine" in text
    assert "must be 'local' (qdrant-client local mode) or 'edge'" in text
    assert "'faiss'" in text
