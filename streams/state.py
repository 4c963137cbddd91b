"""Per-user and per-item state, and the pure functions that update it.

States are plain JSON-able dicts because they live in Faust tables whose
changelogs are JSON. Keeping the update rules here, free of Faust, lets unit
tests pin them down exactly.
"""

from __future__ import annotations

import base64
import heapq
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from genre.core.registry import Registry
from genre.schemas import ClickEvent

UserState = dict[str, Any]
ItemState = dict[str, Any]


def new_user_state() -> UserState:
    """An empty user: no history, no vector."""
    return {
        "history": [],
        "seen": [],
        "recent_events": [],
        "clicks": 0,
        "vector": None,
        "vector_ts": None,
        "last_ts": None,
        "profiled_clicks": 0,
    }


def encode_vector(vector: np.ndarray) -> str:
    """A float32 vector as base64 text: a quarter of the bytes of a JSON float list.

    User states are changelogged on every batch that touches them; the vector
    is most of a state, so this keeps changelog traffic (and memory) down.
    """
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")


def user_vector(state: UserState) -> np.ndarray | None:
    """The user's vector as float32, whichever form the state holds it in.

    States written before vectors were base64-encoded hold a JSON float list.
    """
    vector = state.get("vector")
    if vector is None or isinstance(vector, np.ndarray):
        return vector
    if isinstance(vector, str):
        return decode_vector(vector)
    return np.asarray(vector, np.float32)


def decode_vector(text: str) -> np.ndarray:
    """The float32 vector that ``encode_vector`` wrote as base64 text."""
    return np.frombuffer(base64.b64decode(text), "<f4").astype(np.float32)


def decay(age_s: float, half_life_s: float) -> float:
    """Exponential decay factor for an age in seconds (1.0 at age 0, 0.5 at a half-life)."""
    return math.exp(-math.log(2.0) * max(age_s, 0.0) / half_life_s)


class UserVectorUpdater(Protocol):
    """Folds one clicked item's vector into the user's vector."""

    def update(
        self,
        vector: np.ndarray | None,
        vector_ts: float | None,
        item: np.ndarray,
        weight: float,
        ts: float,
    ) -> np.ndarray: ...


USER_VECTOR_UPDATERS: Registry[UserVectorUpdater] = Registry(
    "user-vector updater", "streams.user_vector.name"
)


@USER_VECTOR_UPDATERS.register("decayed_mean")
@dataclass(frozen=True)
class DecayedMean:
    """Time-decayed weighted mean of clicked item vectors, re-normalised (cosine space).

    The old vector's weight halves every ``half_life_s`` of event time, so the
    vector follows a user's current taste without forgetting it at once.
    """

    half_life_s: float = 86400.0

    def update(
        self,
        vector: np.ndarray | None,
        vector_ts: float | None,
        item: np.ndarray,
        weight: float,
        ts: float,
    ) -> np.ndarray:
        if vector is None or vector_ts is None:
            out = item * weight
        else:
            out = vector * decay(ts - vector_ts, self.half_life_s) + item * weight
        norm = float(np.linalg.norm(out))
        return out / norm if norm > 0 else out


@USER_VECTOR_UPDATERS.register("last_item")
@dataclass(frozen=True)
class LastItem:
    """The user's vector is the last clicked item's vector (no memory)."""

    def update(
        self,
        vector: np.ndarray | None,
        vector_ts: float | None,
        item: np.ndarray,
        weight: float,
        ts: float,
    ) -> np.ndarray:
        return item


@dataclass(frozen=True)
class UserStateRules:
    """How clicks change a user's state; built from ``streams`` config."""

    history_size: int
    max_seen: int
    dedup_window: int
    co_click_window: int
    click_weights: dict[str, float]
    updater: UserVectorUpdater

    def is_duplicate(self, state: UserState, event_id: str) -> bool:
        """True when ``event_id`` is among the user's last ``dedup_window`` events."""
        return event_id in state["recent_events"]

    def apply(
        self,
        state: UserState,
        event: ClickEvent,
        item_vector: np.ndarray | None,
        *,
        vector_as_array: bool = False,
    ) -> list[str]:
        """Apply ``event`` to ``state`` in place; returns the items it co-clicks with.

        The vector is stored base64-encoded (``encode_vector``); with
        ``vector_as_array`` it stays a float32 array, so a batch applying many
        clicks of one user encodes it once, in ``finish_user_state``.
        """
        # Interned: every user's history and seen list then point at one string per
        # item instead of a copy per click (bench/bench_state.py measures the heap).
        item_id = sys.intern(event.item_id)
        window = state["history"][-self.co_click_window :] if self.co_click_window > 0 else []
        neighbours = [i for i in window if i != item_id]
        neighbours = list(dict.fromkeys(reversed(neighbours)))  # most recent first, unique
        history = [i for i in state["history"] if i != item_id]
        history.append(item_id)
        state["history"] = history[-self.history_size :]
        if self.max_seen and item_id not in state["seen"]:
            state["seen"] = (state["seen"] + [item_id])[-self.max_seen :]
        state["recent_events"] = (state["recent_events"] + [event.event_id])[-self.dedup_window :]
        state["clicks"] += 1
        state["last_ts"] = event.ts
        if item_vector is not None:
            weight = self.click_weights.get(str(event.type), 1.0)
            old = user_vector(state)
            new = self.updater.update(old, state["vector_ts"], item_vector, weight, event.ts)
            new = new.astype(np.float32)
            state["vector"] = new if vector_as_array else encode_vector(new)
            state["vector_ts"] = event.ts
        return neighbours


def finish_user_state(state: UserState) -> UserState:
    """Make ``state`` JSON-able again after ``apply(..., vector_as_array=True)``."""
    if isinstance(state["vector"], np.ndarray):
        state["vector"] = encode_vector(state["vector"])
    return state


def new_item_state() -> ItemState:
    """An item with no co-click edges and no popularity yet."""
    return {"edges": {}, "pop": 0.0, "pop_ts": None}


@dataclass(frozen=True)
class GraphRules:
    """Time-decayed co-click edges and trending counts for one item."""

    edge_half_life_s: float
    trending_half_life_s: float
    max_neighbours: int

    def add_neighbours(
        self, state: ItemState, neighbours: Sequence[str], ts: float, weight: float = 1.0
    ) -> None:
        """Strengthen edges to ``neighbours`` at event time ``ts``; prune to the strongest."""
        edges: dict[str, list[float]] = state["edges"]
        for nbr in neighbours:
            w, last = edges.get(nbr, (0.0, ts))
            edges[nbr] = [w * decay(ts - last, self.edge_half_life_s) + weight, max(ts, last)]
        excess = len(edges) - self.max_neighbours
        if excess > 0:
            # Drop the weakest edges in place. Once an item has max_neighbours edges
            # this runs on nearly every click of it; the inlined weights and a
            # partial selection take 40 us where sorting every edge through
            # edge_weight took 89 us (100 edges, 5 new neighbours, 2-core machine).
            rate = -math.log(2.0) / self.edge_half_life_s
            weights = [
                (w * math.exp(rate * (ts - last)) if ts > last else w, nbr)
                for nbr, (w, last) in edges.items()
            ]
            for _, nbr in heapq.nsmallest(excess, weights):
                del edges[nbr]

    def add_click(self, state: ItemState, ts: float, weight: float = 1.0) -> None:
        """Count one click toward the item's decayed popularity."""
        last = state["pop_ts"]
        base = 0.0 if last is None else state["pop"] * decay(ts - last, self.trending_half_life_s)
        state["pop"] = base + weight
        state["pop_ts"] = ts if last is None else max(ts, last)

    def edge_weight(self, edge: Sequence[float], now: float) -> float:
        """An edge's weight decayed to ``now``."""
        return edge[0] * decay(now - edge[1], self.edge_half_life_s)

    def popularity(self, state: ItemState, now: float) -> float:
        """The item's trending score decayed to ``now``."""
        if state["pop_ts"] is None:
            return 0.0
        return state["pop"] * decay(now - state["pop_ts"], self.trending_half_life_s)


def neighbour_scores(
    states: Callable[[str], ItemState | None],
    recent_items: Sequence[str],
    rules: GraphRules,
    now: float,
) -> dict[str, tuple[float, str]]:
    """Co-click candidates for a user: item -> (score, the recent item that contributed most).

    More recent history items count more (1, 1/2, 1/3, ...), as in
    session-based item-kNN.
    """
    totals: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}  # item -> (largest single contribution, its source)
    # rules.edge_weight inlined: this loop runs per edge of every recent item of
    # every scored user (~1000 times per user), and two calls per edge were a
    # third of the co-click source's time.
    rate = -math.log(2.0) / rules.edge_half_life_s
    exp = math.exp
    for rank, item in enumerate(reversed(recent_items)):
        state = states(item)
        if not state:
            continue
        position_weight = 1.0 / (rank + 1)
        for nbr, (weight, last) in state["edges"].items():
            age = now - last
            contribution = position_weight * weight * (exp(rate * age) if age > 0 else 1.0)
            totals[nbr] = totals.get(nbr, 0.0) + contribution
            previous = best.get(nbr)
            if previous is None or contribution > previous[0]:
                best[nbr] = (contribution, item)
    return {nbr: (total, best[nbr][1]) for nbr, total in totals.items()}
