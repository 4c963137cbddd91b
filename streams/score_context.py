"""What the fold hands the scorer: a user's state at their latest click, in process.

In one process (``genre worker --role all``) the fold passes ``ScoreContext``s
straight to the scorer through ``PendingScores``: no topic round trip. Between
processes (split roles) the same context travels as a ``ScoreRequest`` record
(``to_request`` / ``from_request``). The wire record carries text; the context
carries arrays.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from genre.core.features import UserState, decode_vector, encode_vector
from genre.core.features.ids import SeenItems
from genre.core.telemetry import METRICS
from genre.schemas import ScoreRequest


@dataclass(slots=True)
class ScoreContext:
    """One user to score: the trigger click and the user's state just after it.

    ``seen`` is the user's seen set as it was (sets are replaced, never changed).
    Times are Unix seconds: the click's produce time, when the fold took its
    batch, when the fold finished, and when the scorer received it.
    """

    user_id: str
    trigger_event_id: str
    trigger_produced_at: float
    trigger_ts: float
    history: tuple[str, ...]
    seen: SeenItems
    clicks: int
    vector: np.ndarray | None
    clicked_items: Sequence[str] = ()
    taken_at: float = 0.0
    folded_at: float = 0.0
    received_at: float = 0.0
    #: The user's LLM profile, filled in by the scorer from its profile table.
    profile_vector: np.ndarray | None = None
    profile_interests: tuple[str, ...] = field(default_factory=tuple)


def context_of(
    state: UserState,
    *,
    user_id: str,
    event_id: str,
    produced_at: float,
    ts: float,
    clicked_items: Sequence[str],
    taken_at: float,
    folded_at: float,
) -> ScoreContext:
    """The context of a user whose clicks were just folded into ``state``."""
    return ScoreContext(
        user_id=user_id,
        trigger_event_id=event_id,
        trigger_produced_at=produced_at,
        trigger_ts=ts,
        history=tuple(state.history),
        seen=state.seen,
        clicks=state.clicks,
        vector=state.vector,
        clicked_items=clicked_items,
        taken_at=taken_at,
        folded_at=folded_at,
        received_at=folded_at,
    )


def to_request(ctx: ScoreContext) -> ScoreRequest:
    """The wire form of a context, for a scorer in another process."""
    return ScoreRequest.model_construct(
        user_id=ctx.user_id,
        trigger_event_id=ctx.trigger_event_id,
        trigger_produced_at=ctx.trigger_produced_at,
        trigger_ts=ctx.trigger_ts,
        clicked_items=list(ctx.clicked_items),
        recent_items=list(ctx.history),
        seen_items=list(ctx.seen),
        vector_b64=None if ctx.vector is None else encode_vector(ctx.vector),
        clicks=ctx.clicks,
        taken_at=ctx.taken_at,
        folded_at=ctx.folded_at,
    )


def from_request(req: ScoreRequest, received_at: float) -> ScoreContext:
    """A context from a request a stream role wrote."""
    return ScoreContext(
        user_id=req.user_id,
        trigger_event_id=req.trigger_event_id,
        trigger_produced_at=req.trigger_produced_at,
        trigger_ts=req.trigger_ts,
        history=tuple(req.recent_items),
        seen=SeenItems.of(req.seen_items),
        clicks=req.clicks,
        vector=decode_vector(req.vector_b64) if req.vector_b64 else None,
        clicked_items=req.clicked_items,
        taken_at=req.taken_at or req.trigger_produced_at,
        folded_at=req.folded_at or req.trigger_produced_at,
        received_at=received_at,
    )


#: Called once every context of a submitted batch is settled (its acknowledgement).
OnSettled = Callable[[], Awaitable[None]]


class PendingScores:
    """Users waiting for a list in this process, the latest context per user.

    The fold submits after every batch; the scorer takes the oldest waiting
    users. A user who clicks again before being scored is scored once, on the
    newer state (``genre_superseded_score_requests_total``). Each submitted
    batch comes with ``on_settled`` (its acknowledgement), awaited once every
    user it submitted has been scored or superseded, so offsets are committed
    only past clicks whose lists are published.
    """

    def __init__(self) -> None:
        self._pending: dict[str, tuple[ScoreContext, SubmittedBatch]] = {}
        self._arrived = asyncio.Event()
        self._acks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, contexts: Sequence[ScoreContext], on_settled: OnSettled) -> None:
        """Queue ``contexts`` (a user already waiting is replaced by their newer context)."""
        batch = SubmittedBatch(len(contexts), on_settled, self._acks)
        superseded = 0
        for ctx in contexts:
            # A user already waiting keeps their place in the queue (a user who clicks
            # faster than the queue drains must not be pushed back forever).
            old = self._pending.get(ctx.user_id)
            if old is not None:
                superseded += 1
                old[1].settle_later()
                # No list was published in between: the older clicks are checked for
                # online hits against the same list as the newer ones.
                ctx.clicked_items = [*old[0].clicked_items, *ctx.clicked_items]
            self._pending[ctx.user_id] = (ctx, batch)
        if superseded:
            METRICS.superseded_requests.inc(superseded)
        if not contexts:
            batch.settle_later(0)
        if self._pending:
            self._arrived.set()

    async def take(self, max_users: int) -> list[tuple[ScoreContext, SubmittedBatch]]:
        """Wait for waiting users and take up to ``max_users`` of them, oldest first.

        Call ``settle()`` on each one's batch once its list is published.
        """
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        users = list(itertools.islice(self._pending, max_users))
        return [self._pending.pop(user_id) for user_id in users]


class SubmittedBatch:
    """Counts a submitted batch's contexts down; acknowledges the batch at zero."""

    __slots__ = ("_tasks", "on_settled", "remaining")

    def __init__(self, size: int, on_settled: OnSettled, tasks: set[asyncio.Task]) -> None:
        self.remaining = size
        self.on_settled = on_settled
        self._tasks = tasks

    async def settle(self) -> None:
        """Count one context as settled; at zero acknowledge the batch."""
        self.remaining -= 1
        if self.remaining == 0:
            await self.on_settled()

    def settle_later(self, n: int = 1) -> None:
        """``settle`` from synchronous code: the acknowledgement runs as a task."""
        self.remaining -= n
        if self.remaining <= 0:
            task = asyncio.ensure_future(self.on_settled())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
