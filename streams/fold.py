"""The fold: a micro-batch of validated clicks -> user states, graph evidence, users to score.

Pure and Faust-free: the user-state agent calls it with the Faust table behind
``UserStore``; the tests and the training-parity check call it with a dict.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from genre.core.features import (
    CoClickEvidence,
    FeatureSpec,
    UserState,
    UserStateRules,
    click_evidence,
)
from genre.core.features.users import VectorUpdate
from genre.schemas import ClickEvent, ProfileRequest
from genre.streams.score_context import ScoreContext, context_of


class UserStore(Protocol):
    """User states by user id (the ``user-state`` table, or a dict in tests)."""

    def get(self, user_id: str) -> UserState | None: ...

    def __setitem__(self, user_id: str, state: UserState) -> None: ...


@dataclass(frozen=True, slots=True)
class Click:
    """A validated click and where its producer's record was (for hop timing and the DLQ)."""

    event: ClickEvent
    produced_at: float  # the producer's record timestamp, Unix seconds
    topic: str
    partition: int
    offset: int
    key: bytes | None = None


@dataclass
class FoldResult:
    """What folding one micro-batch produced."""

    #: The new state of every user the batch changed (write each once).
    states: dict[str, UserState] = field(default_factory=dict)
    #: Co-click evidence for the item graph, in click order.
    evidence: list[CoClickEvidence] = field(default_factory=list)
    #: One context per user with a click in the batch (re-sent clicks included: a
    #: click replayed after a crash still gets its list), latest click per user.
    contexts: list[ScoreContext] = field(default_factory=list)
    profiles_due: list[ProfileRequest] = field(default_factory=list)
    #: Clicks on items the catalogue does not hold (for the dead-letter topic).
    unknown_items: list[Click] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0


class Fold:
    """Folds click micro-batches with the stream's rules (``FeatureSpec.user_rules``)."""

    def __init__(self, spec: FeatureSpec, profile_every: int = 0, profile_titles: int = 10) -> None:
        self.rules: UserStateRules = spec.user_rules()
        self.profile_every = profile_every
        self.profile_titles = profile_titles

    def __call__(
        self,
        clicks: Sequence[Click],
        users: UserStore,
        vectors: Mapping[str, np.ndarray],
        *,
        strict_items: bool = True,
        taken_at: float = 0.0,
        folded_at: float = 0.0,
    ) -> FoldResult:
        """Apply ``clicks`` in order. ``vectors`` holds the item vectors known for them;
        with ``strict_items`` a click on another item is refused (``unknown_items``),
        without (the vector store is unreachable) it is applied without a vector."""
        rules = self.rules
        out = FoldResult()
        current: dict[str, UserState] = {}  # every user looked up in this batch
        last: dict[str, Click] = {}
        clicked: dict[str, list[str]] = {}
        due: dict[str, ProfileRequest] = {}
        vector_updates: list[VectorUpdate] = []
        for click in clicks:
            ev = click.event
            user_id = ev.user_id
            state = current.get(user_id)
            if state is None:
                state = current[user_id] = users.get(user_id) or UserState()
            if rules.is_duplicate(state, ev.event_id):
                out.duplicates += 1
                last[user_id] = click  # applied before (a re-send, or a replay after a crash)
                continue
            vector = vectors.get(ev.item_id)
            if vector is None and strict_items:
                out.unknown_items.append(click)
                continue
            neighbours = rules.fold_click(state, item_id=ev.item_id, event_id=ev.event_id, ts=ev.ts)
            if vector is not None:
                vector_updates.append((state, vector, str(ev.type), ev.ts))
            out.applied += 1
            out.states[user_id] = state
            last[user_id] = click
            clicked.setdefault(user_id, []).append(ev.item_id)
            recent = rules.take_profile(state, self.profile_every, self.profile_titles)
            if recent is not None:
                due[user_id] = ProfileRequest.model_construct(
                    user_id=user_id, recent_items=recent, clicks=state.clicks, trigger_ts=ev.ts
                )
            out.evidence.extend(click_evidence(ev.item_id, neighbours, ev.ts))
        rules.update_vectors(vector_updates)  # every user's vector, column-wise
        folded_at = folded_at or time.time()
        out.contexts = [
            context_of(
                current[user_id],
                user_id=user_id,
                event_id=click.event.event_id,
                produced_at=click.produced_at,
                ts=click.event.ts,
                clicked_items=clicked.get(user_id, ()),
                taken_at=taken_at,
                folded_at=folded_at,
            )
            for user_id, click in last.items()
        ]
        out.profiles_due = list(due.values())
        return out
