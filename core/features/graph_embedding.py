"""The graph model's item embeddings as a retrieval index, and their fold-in.

The graph model (LightGCN over the user-item click graph, trained offline by
``genre train --model graph``) gives every item clicked in training an
embedding. The ``graph`` candidate source retrieves, for a user, the items
nearest to the mean embedding of their recent items. Items that arrive after
training have no embedding: each refresh folds them in from the live co-click
graph, as the weighted mean of the embeddings of their trained neighbours
(edge weights decayed to now), so a new item is retrievable from its first
co-clicks, long before the next training run. Fold-ins read trained neighbours
only (no chains of fold-ins), so the result does not depend on refresh order.

The stream's source (``workers.candidates.GraphSource``) and the evaluation's
replay (``model_export.replay``) both use this code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genre.core.features.graph import ItemState
from genre.core.features.ids import ITEM_IDS

#: Files ``save_graph_embeddings`` writes into a graph model folder.
EMBEDDINGS_FILE = "embeddings.npz"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class GraphEmbeddings:
    """Item embeddings by ``ITEM_IDS`` row: the first ``trained`` from training, the rest
    fold-ins. Immutable: a refresh builds a new object (the scorer's thread reads one
    while the event loop builds the next)."""

    rows: np.ndarray  # int64 [N] ITEM_IDS rows
    vectors: np.ndarray  # float32 [N, D]
    trained: int
    position: dict[int, int]  # ITEM_IDS row -> index into rows / vectors

    @classmethod
    def of(cls, item_ids: Sequence[str], vectors: np.ndarray) -> GraphEmbeddings:
        """Trained embeddings of ``item_ids`` (float [N, D])."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(item_ids):
            raise ValueError(
                f"graph embeddings must be [{len(item_ids)} items, D], got {vectors.shape}"
            )
        rows = ITEM_IDS.rows(list(item_ids))
        return cls(rows, vectors, len(rows), {int(r): i for i, r in enumerate(rows.tolist())})

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.vectors.shape[1])

    def is_trained(self, row: int) -> bool:
        """Whether the item at ``ITEM_IDS`` row ``row`` has an embedding from training."""
        index = self.position.get(row)
        return index is not None and index < self.trained

    def query(self, history: Sequence[str], recent: int) -> np.ndarray | None:
        """The mean embedding of the last ``recent`` history items that have one (oldest
        first in ``history``), None when none has."""
        find = ITEM_IDS.find
        found = [
            i
            for item in history[-recent:]
            if (row := find(item)) is not None and (i := self.position.get(row)) is not None
        ]
        if not found:
            return None
        return self.vectors[found].mean(axis=0)

    def search(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (float [B, D]): the ``k`` items with the largest dot product, as
        (ITEM_IDS rows, scores) in descending score order. One matrix product per batch."""
        scores = np.asarray(queries, np.float32) @ self.vectors.T  # [B, N]
        k = min(k, scores.shape[1])
        if k == 0:
            return [(self.rows[:0], np.zeros(0)) for _ in range(len(scores))]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out = []
        for row_scores, idx in zip(scores, top, strict=True):
            best = idx[np.argsort(-row_scores[idx], kind="stable")]
            out.append((self.rows[best], row_scores[best].astype(np.float64)))
        return out

    def with_fold_ins(
        self,
        items: Iterable[str],
        state_of: Callable[[str], ItemState | None],
        now: float,
        edge_half_life_s: float,
        min_neighbours: int = 1,
    ) -> GraphEmbeddings:
        """A copy whose fold-ins are recomputed for ``items`` (ids of graph items; trained
        ones are skipped): each gets the mean of its trained neighbours' embeddings
        weighted by their edge weights decayed to ``now``, when at least
        ``min_neighbours`` trained neighbours exist."""
        rate = -math.log(2.0) / edge_half_life_s
        new_rows, new_vectors = [], []
        for item in items:
            row = ITEM_IDS.row(item)
            if self.is_trained(row):
                continue
            state = state_of(item)
            if state is None or not state.edges:
                continue
            nbrs, weights, last = state.edge_arrays()
            index = np.asarray([self.position.get(int(r), -1) for r in nbrs.tolist()], np.int64)
            keep = (index >= 0) & (index < self.trained)
            if int(keep.sum()) < min_neighbours:
                continue
            w = weights[keep] * np.exp(rate * np.maximum(now - last[keep], 0.0))
            if w.sum() <= 0:
                continue
            new_rows.append(row)
            new_vectors.append((w[:, None] * self.vectors[index[keep]]).sum(axis=0) / w.sum())
        t = self.trained
        if not new_rows:
            if len(self) == t:
                return self
            return GraphEmbeddings(self.rows[:t], self.vectors[:t], t, _positions(self.rows[:t]))
        rows = np.concatenate([self.rows[:t], np.asarray(new_rows, np.int64)])
        vectors = np.concatenate([self.vectors[:t], np.asarray(new_vectors, np.float32)])
        return GraphEmbeddings(rows, vectors, t, _positions(rows))


def _positions(rows: np.ndarray) -> dict[int, int]:
    return {int(r): i for i, r in enumerate(rows.tolist())}


def save_graph_embeddings(
    folder: Path, item_ids: Sequence[str], vectors: np.ndarray, info: dict[str, object]
) -> Path:
    """Write a graph model folder: the embeddings and a manifest (``info``, the shape)."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.asarray(vectors, np.float32)
    tmp = folder / f".{EMBEDDINGS_FILE}.tmp.npz"
    np.savez(tmp, item_ids=np.asarray(list(item_ids), dtype=str), vectors=vectors)
    tmp.replace(folder / EMBEDDINGS_FILE)
    manifest = {"items": len(item_ids), "dim": int(vectors.shape[1]), **info}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder / MANIFEST_FILE


def load_graph_embeddings(folder: Path) -> tuple[GraphEmbeddings, dict[str, object]]:
    """Read what ``save_graph_embeddings`` wrote; FileNotFoundError names the fix."""
    path = Path(folder) / EMBEDDINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no graph model at {folder} ({EMBEDDINGS_FILE} missing); "
            "run `genre train --model graph` or remove the graph source from scorer.candidates"
        )
    with np.load(path) as blob:
        item_ids, vectors = blob["item_ids"].tolist(), blob["vectors"]
    manifest_path = Path(folder) / MANIFEST_FILE
    info = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return GraphEmbeddings.of(item_ids, vectors), info
