"""A user's state and the rules that fold a click into it.

The stream's user-state agent, the training replay and the evaluation all
fold clicks with ``UserStateRules.apply``: one implementation, so a model is
trained on exactly the inputs it is served.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson

from genre.core.features.codec import decode_vector, encode_vector
from genre.core.features.decay import decay
from genre.core.features.ids import SeenItems
from genre.core.registry import Registry


@dataclass(slots=True)
class UserState:
    """What the stream remembers of one user.

    ``history`` holds the last items, oldest first, each once (a re-click moves
    the item to the end); ``seen`` (item rows, 4 bytes each) and ``recent_events``
    are kept in arrival order and trimmed from the oldest end.
    """

    history: list[str] = field(default_factory=list)
    seen: SeenItems = field(default_factory=SeenItems)
    recent_events: list[str] = field(default_factory=list)
    clicks: int = 0
    vector: np.ndarray | None = None
    vector_ts: float | None = None
    last_ts: float | None = None
    profiled_clicks: int = 0

    def to_bytes(self) -> bytes:
        """The state as JSON bytes (its changelog form; the vector as base64 float32)."""
        return orjson.dumps(
            {
                "history": self.history,
                "seen": list(self.seen),
                "recent_events": list(self.recent_events),
                "clicks": self.clicks,
                "vector": None if self.vector is None else encode_vector(self.vector),
                "vector_ts": self.vector_ts,
                "last_ts": self.last_ts,
                "profiled_clicks": self.profiled_clicks,
            }
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> UserState:
        """Parse ``to_bytes`` output; ValueError for anything else."""
        raw = orjson.loads(payload)
        try:
            vector = raw.get("vector")
            return cls(
                history=[sys.intern(i) for i in raw["history"]],
                seen=SeenItems.of(raw["seen"]),
                recent_events=list(raw["recent_events"]),
                clicks=int(raw["clicks"]),
                vector=None if vector is None else decode_vector(vector),
                vector_ts=raw.get("vector_ts"),
                last_ts=raw.get("last_ts"),
                profiled_clicks=int(raw.get("profiled_clicks", 0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a user state: {exc!r} in {payload[:200]!r}") from exc


class UserVectorUpdater(Protocol):
    """Folds clicked items' vectors into users' vectors, one click per user per call.

    Arrays are row-aligned: ``vectors`` [B, D] float32 (zeros where ``known`` is
    False: no vector yet), ``vector_ts`` [B], ``items`` [B, D], ``weights`` [B],
    ``ts`` [B]. Returns the new vectors [B, D] float32.
    """

    def update(
        self,
        vectors: np.ndarray,
        known: np.ndarray,
        vector_ts: np.ndarray,
        items: np.ndarray,
        weights: np.ndarray,
        ts: np.ndarray,
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
        vectors: np.ndarray,
        known: np.ndarray,
        vector_ts: np.ndarray,
        items: np.ndarray,
        weights: np.ndarray,
        ts: np.ndarray,
    ) -> np.ndarray:
        factor = np.where(known, decay(ts - vector_ts, self.half_life_s), 0.0)
        out = vectors * factor.astype(np.float32)[:, None]
        out += items * weights.astype(np.float32)[:, None]
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        return out / np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]


@USER_VECTOR_UPDATERS.register("last_item")
@dataclass(frozen=True)
class LastItem:
    """The user's vector is the last clicked item's vector (no memory)."""

    def update(
        self,
        vectors: np.ndarray,
        known: np.ndarray,
        vector_ts: np.ndarray,
        items: np.ndarray,
        weights: np.ndarray,
        ts: np.ndarray,
    ) -> np.ndarray:
        return np.asarray(items, np.float32)


#: A pending vector update: the user's state, the clicked item's vector, kind, time.
VectorUpdate = tuple["UserState", np.ndarray, str, float]


@dataclass(frozen=True)
class UserStateRules:
    """How clicks change a user's state (``streams`` config, through ``FeatureSpec``)."""

    history_size: int
    max_seen: int
    dedup_window: int
    co_click_window: int
    click_weights: dict[str, float]
    updater: UserVectorUpdater

    def is_duplicate(self, state: UserState, event_id: str) -> bool:
        """True when ``event_id`` is among the user's last ``dedup_window`` events."""
        return event_id in state.recent_events

    def apply(
        self,
        state: UserState,
        *,
        item_id: str,
        event_id: str,
        kind: str,
        ts: float,
        item_vector: np.ndarray | None,
    ) -> list[str]:
        """Fold one click into ``state`` in place; returns the items it co-clicks with
        (the last ``co_click_window`` history items before it, most recent first).

        Without ``item_vector`` (the vector store was unreachable) history, seen set
        and counts still change; the vector catches up with the next click.
        """
        neighbours = self.fold_click(state, item_id=item_id, event_id=event_id, ts=ts)
        if item_vector is not None:
            self.update_vectors([(state, item_vector, kind, ts)])
        return neighbours

    def fold_click(self, state: UserState, *, item_id: str, event_id: str, ts: float) -> list[str]:
        """``apply`` without the vector: history, seen set, event ids, counts."""
        # Interned: every user's history and seen set then point at one string per
        # item instead of a copy per click (bench/bench_state.py measures the heap).
        item_id = sys.intern(item_id)
        history = state.history
        window = history[-self.co_click_window :] if self.co_click_window > 0 else []
        neighbours = [i for i in reversed(window) if i != item_id]
        if item_id in history:
            history.remove(item_id)
        history.append(item_id)
        if len(history) > self.history_size:
            del history[: len(history) - self.history_size]
        if self.max_seen:
            state.seen = state.seen.added(item_id, self.max_seen)
        events = state.recent_events
        events.append(event_id)
        if len(events) > self.dedup_window:
            del events[: len(events) - self.dedup_window]
        state.clicks += 1
        state.last_ts = ts
        return neighbours

    def update_vectors(self, updates: Sequence[VectorUpdate]) -> None:
        """Fold clicked items' vectors into their users' vectors, in the given order.

        Column-wise: the first pending click of every user in one array operation,
        then every user's second, and so on.
        """
        rounds: list[list[VectorUpdate]] = []
        depth: dict[int, int] = {}
        for update in updates:
            key = id(update[0])
            k = depth.get(key, 0)
            depth[key] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(update)
        for batch in rounds:
            states = [u[0] for u in batch]
            items = np.stack([u[1] for u in batch]).astype(np.float32, copy=False)
            known = np.asarray([s.vector is not None for s in states])
            vectors = np.stack(
                [s.vector if s.vector is not None else np.zeros_like(items[0]) for s in states]
            )
            vector_ts = np.asarray([s.vector_ts or 0.0 for s in states], np.float64)
            weights = np.asarray([self.click_weights.get(u[2], 1.0) for u in batch], np.float64)
            ts = np.asarray([u[3] for u in batch], np.float64)
            new = self.updater.update(vectors, known, vector_ts, items, weights, ts)
            for state, row, t in zip(states, new, ts.tolist(), strict=True):
                state.vector = row
                state.vector_ts = t

    def profile_due(self, state: UserState, every_k_clicks: int) -> bool:
        """Whether the user clicked ``every_k_clicks`` times since their last LLM profile."""
        return every_k_clicks > 0 and state.clicks - state.profiled_clicks >= every_k_clicks

    def take_profile(self, state: UserState, every_k_clicks: int, recent: int) -> list[str] | None:
        """When a profile is due (``profile_due``), mark it written and return the items it
        is written from (the last ``recent`` of the history); else None."""
        if not self.profile_due(state, every_k_clicks):
            return None
        state.profiled_clicks = state.clicks
        return state.history[-recent:]
