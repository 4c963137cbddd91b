"""What the pull API answers from: the latest list per user, item vectors, the co-click graph.

Each view is filled by ``ApiFollower`` (one consumer thread) from a topic every
worker writes, read from its beginning, so one API process sees every user and
item whatever the number of workers and however their partitions are assigned:

* ``LatestLists``: ``genre.recommendations``, latest list per user, pre-rendered.
* ``ContentIndex``: ``genre.item-vectors`` (compacted), cosine nearest neighbours.
* ``CoClickGraph``: ``genre.co-clicks`` folded with the graph agent's own rules
  (``GraphRules``, ``apply_evidence``), edge weights decayed to the newest event time.

Writers run on the follower thread, readers on the event loop: values are replaced,
never changed in place, and the index's arrays are swapped under a lock.
"""

from __future__ import annotations

import threading

import numpy as np
import orjson

from genre.core.features import GraphRules, ItemState, decay, decode_vector
from genre.core.features.graph import CoClickEvidence, apply_evidence
from genre.schemas import CoClicks, ItemVector, Recommendation
from genre.schemas.api import Neighbour, UserRecommendations


class LatestLists:
    """user id -> the JSON body of ``GET /v1/users/{user_id}/recommendations``."""

    def __init__(self) -> None:
        self._bodies: dict[str, tuple[float, bytes]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def apply(self, rec: Recommendation) -> None:
        """Keep ``rec`` unless the user already has a newer list (a rebalance can make two
        scorers publish for one user)."""
        old = self._bodies.get(rec.user_id)
        if old is not None and old[0] > rec.generated_at:
            return
        body = UserRecommendations(
            user_id=rec.user_id,
            items=rec.items,
            model_version=rec.model_version,
            generated_at=rec.generated_at,
            trigger_event_id=rec.trigger_event_id,
            arm=rec.arm,
        ).model_dump_json()
        self._bodies[rec.user_id] = (rec.generated_at, body.encode())

    def body(self, user_id: str) -> bytes | None:
        """The rendered latest list of ``user_id``, or None for a user without one."""
        entry = self._bodies.get(user_id)
        return None if entry is None else entry[1]


class ContentIndex:
    """Unit-normalised item vectors in one growable matrix; rows of deleted items are zero."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._titles: dict[str, str] = {}
        self._matrix = np.zeros((0, dim), np.float32)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def title(self, item_id: str) -> str:
        """The item's title from its payload ("" when unknown)."""
        return self._titles.get(item_id, "")

    def apply(self, record: ItemVector) -> str | None:
        """Store ``record``'s vector; returns why it is unusable, or None."""
        try:
            vector = decode_vector(record.vector)
        except ValueError as exc:
            return f"vector is not base64 float32: {exc}"
        if vector.shape != (self.dim,):
            return f"vector has {vector.size} dimensions, encoder.dim is {self.dim}"
        norm = float(np.linalg.norm(vector))
        unit = vector / norm if norm > 0 else vector
        with self._lock:
            row = self._rows.get(record.item_id)
            if row is None:
                row = len(self._ids)
                if row >= len(self._matrix):
                    grown = np.zeros((max(64, 2 * len(self._matrix)), self.dim), np.float32)
                    grown[: len(self._matrix)] = self._matrix
                    self._matrix = grown
                self._ids.append(record.item_id)
                self._rows[record.item_id] = row
            self._matrix[row] = unit
        self._titles[record.item_id] = str(record.payload.get("title", ""))
        return None

    def delete(self, item_id: str) -> None:
        """Forget an item (a tombstone on the compacted topic)."""
        with self._lock:
            row = self._rows.pop(item_id, None)
            if row is not None:
                self._matrix[row] = 0.0
                self._ids[row] = None
        self._titles.pop(item_id, None)

    def nearest(self, item_id: str, k: int) -> list[Neighbour]:
        """The ``k`` items most similar to ``item_id`` by cosine, best first (not itself)."""
        with self._lock:
            row = self._rows.get(item_id)
            if row is None:
                return []
            n = len(self._ids)
            scores = self._matrix[:n] @ self._matrix[row]
            ids = list(self._ids)
        scores[row] = -np.inf
        for r, other in enumerate(ids):
            if other is None:
                scores[r] = -np.inf
        take = min(k, n)
        if take <= 0:
            return []
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            Neighbour(item_id=ids[r] or "", score=float(scores[r]), title=self.title(ids[r] or ""))
            for r in top.tolist()
            if np.isfinite(scores[r])
        ]


class CoClickGraph:
    """The item graph as the graph agent keeps it, folded from ``genre.co-clicks``."""

    def __init__(self, rules: GraphRules) -> None:
        self.rules = rules
        self._states: dict[str, ItemState] = {}
        #: The newest event time seen: edge weights are decayed to it, as the stream does.
        self.now = 0.0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._states

    def apply(self, payload: bytes) -> int:
        """Fold one ``CoClicks`` batch message; returns how many rows it held."""
        rows = CoClicks.from_trusted_bytes(payload)
        evidence = [CoClickEvidence(i, tuple(n), float(c), float(t)) for i, n, c, t in rows]
        if evidence:
            self.now = max(self.now, max(ev.ts for ev in evidence))
        self._states.update(apply_evidence(self.rules, evidence, self._states.get))
        return len(rows)

    def neighbours(self, item_id: str, k: int, titles: ContentIndex) -> list[Neighbour]:
        """The ``k`` strongest co-click neighbours of ``item_id``, weights decayed to ``now``."""
        state = self._states.get(item_id)
        if state is None or not state.edges:
            return []
        names = list(state.edges)
        wl = np.asarray([state.edges[n] for n in names], np.float64).reshape(-1, 2)
        weights = wl[:, 0] * decay(self.now - wl[:, 1], self.rules.edge_half_life_s)
        order = np.argsort(-weights, kind="stable")[:k]
        return [
            Neighbour(item_id=names[i], score=float(weights[i]), title=titles.title(names[i]))
            for i in order.tolist()
        ]


def similar_body(item_id: str, k: int, index: ContentIndex, graph: CoClickGraph) -> bytes | None:
    """The JSON body of ``GET /v1/items/{item_id}/similar``, or None for an unknown item."""
    if item_id not in index and item_id not in graph:
        return None
    body = {
        "item_id": item_id,
        "title": index.title(item_id),
        "k": k,
        "content": [n.model_dump() for n in index.nearest(item_id, k)],
        "co_click": [n.model_dump() for n in graph.neighbours(item_id, k, index)],
    }
    return orjson.dumps(body)
