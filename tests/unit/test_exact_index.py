"""The exact in-memory index answers exactly as Qdrant local mode does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genre.core.exact_index import ExactIndex
from genre.core.vectorstore import QdrantStore


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_same_top_k_as_qdrant_local(vectors: np.ndarray, tmp_path: Path) -> None:
    ids = [f"i{n}" for n in range(len(vectors))]
    store = QdrantStore(path=str(tmp_path / "q"))
    store.ensure_collection("items", 16)
    store.upsert("items", ids, vectors, [{} for _ in ids])
    index = ExactIndex(16, capacity=8)  # forces growth
    assert index.load(store.scroll("items")) == len(ids)
    queries = vectors[:5] + 0.1
    ours = index.search_batch(queries, 20)
    theirs = store.search_batch("items", queries, 20)
    store.close()
    for a, b in zip(ours, theirs, strict=True):
        assert [h.id for h in a] == [h.id for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


def test_upsert_replace_delete_and_reuse(vectors: np.ndarray) -> None:
    index = ExactIndex(16)
    index.upsert(["a", "b", "c"], vectors[:3])
    assert [h.id for h in index.search_batch(vectors[1:2], 1)[0]] == ["b"]
    index.upsert(["b"], vectors[2:3])  # replace b with c's vector
    top = index.search_batch(vectors[2:3], 2)[0]
    assert {h.id for h in top} == {"b", "c"}
    index.delete(["c", "missing"])
    assert len(index) == 2
    assert "c" not in {h.id for h in index.search_batch(vectors[2:3], 10)[0]}
    index.upsert(["d"], vectors[3:4])  # reuses c's row
    assert len(index) == 3
    assert index.search_batch(vectors[3:4], 1)[0][0].id == "d"


def test_limit_above_size_and_empty(vectors: np.ndarray) -> None:
    index = ExactIndex(16)
    assert index.search_batch(vectors[:2], 5) == [[], []]
    index.upsert(["a", "b"], vectors[:2])
    hits = index.search_batch(vectors[:1], 50)[0]
    assert [h.id for h in hits] == ["a", "b"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
