"""streams/score_context.py: PendingScores, the in-process hand-over from the fold to the
scorer (latest context per user, batches acknowledged once all their users settled)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from genre.core.telemetry import METRICS
from genre.streams.score_context import PendingScores, ScoreContext


def _ctx(user: str, event: str, clicked: tuple[str, ...] = ()) -> ScoreContext:
    return ScoreContext(
        user_id=user,
        trigger_event_id=event,
        trigger_produced_at=1.0,
        trigger_ts=1.0,
        history=(),
        seen=(),
        clicks=1,
        vector=None,
        clicked_items=clicked,
    )


def _ack(log: list[str], name: str) -> Callable[[], Awaitable[None]]:
    async def acknowledge() -> None:
        log.append(name)

    return acknowledge


def _superseded() -> float:
    return METRICS.superseded_requests._value.get()


async def _settle(taken: list) -> None:
    for _, batch in taken:
        await batch.settle()


async def _let_tasks_run() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_the_latest_context_per_user_wins_and_the_superseded_one_is_counted() -> None:
    async def run() -> None:
        pending, acks = PendingScores(), []
        before = _superseded()
        pending.submit([_ctx("u1", "e1"), _ctx("u2", "e2")], _ack(acks, "b1"))
        pending.submit([_ctx("u1", "e3")], _ack(acks, "b2"))
        assert len(pending) == 2
        assert _superseded() == before + 1
        taken = await pending.take(10)
        assert {ctx.user_id: ctx.trigger_event_id for ctx, _ in taken} == {"u1": "e3", "u2": "e2"}
        assert len(pending) == 0
        await _settle(taken)
        await _let_tasks_run()
        assert sorted(acks) == ["b1", "b2"]

    asyncio.run(run())


def test_a_user_who_clicks_again_keeps_their_place_in_the_queue() -> None:
    """Otherwise a user clicking faster than the queue drains would never be scored."""

    async def run() -> None:
        pending, acks = PendingScores(), []
        pending.submit([_ctx("fast", "e1"), _ctx("other", "e2")], _ack(acks, "b1"))
        pending.submit([_ctx("fast", "e3")], _ack(acks, "b2"))
        first = await pending.take(1)
        assert [(c.user_id, c.trigger_event_id) for c, _ in first] == [("fast", "e3")]
        await _settle(first)
        await _settle(await pending.take(1))
        await _let_tasks_run()
        assert sorted(acks) == ["b1", "b2"]

    asyncio.run(run())


def test_a_superseded_users_clicks_still_count_for_online_hits() -> None:
    """No list was published between the two contexts: the older clicks are checked
    against the same list as the newer ones."""

    async def run() -> None:
        pending, acks = PendingScores(), []
        pending.submit([_ctx("u1", "e1", ("a", "b"))], _ack(acks, "b1"))
        pending.submit([_ctx("u1", "e2", ("c",))], _ack(acks, "b2"))
        pending.submit([_ctx("u1", "e3")], _ack(acks, "b3"))  # a re-sent click: none new
        ((ctx, _),) = await pending.take(10)
        assert ctx.trigger_event_id == "e3"
        assert list(ctx.clicked_items) == ["a", "b", "c"]

    asyncio.run(run())


def test_a_batch_is_acknowledged_once_every_user_it_submitted_is_settled() -> None:
    async def run() -> None:
        pending, acks = PendingScores(), []
        pending.submit([_ctx("u1", "e1"), _ctx("u2", "e2")], _ack(acks, "b1"))
        pending.submit([_ctx("u2", "e3"), _ctx("u3", "e4")], _ack(acks, "b2"))
        await _let_tasks_run()
        assert acks == []  # b1's u2 superseded, but its u1 still waits
        by_user = {ctx.user_id: (ctx, batch) for ctx, batch in await pending.take(10)}
        assert by_user["u2"][0].trigger_event_id == "e3"
        await by_user["u1"][1].settle()
        assert acks == ["b1"]  # u1 scored, u2 superseded: all of b1 settled
        await by_user["u2"][1].settle()
        assert acks == ["b1"]  # b2 still has u3
        await by_user["u3"][1].settle()
        assert acks == ["b1", "b2"]
        await _let_tasks_run()
        assert acks == ["b1", "b2"]  # each exactly once

    asyncio.run(run())


def test_a_batch_whose_users_are_all_superseded_is_acknowledged_without_scoring() -> None:
    async def run() -> None:
        pending, acks = PendingScores(), []
        pending.submit([_ctx("u1", "e1")], _ack(acks, "b1"))
        pending.submit([_ctx("u1", "e2")], _ack(acks, "b2"))
        await _let_tasks_run()
        assert acks == ["b1"]  # nothing of b1 is left to publish
        (taken,) = await pending.take(10)
        assert taken[0].trigger_event_id == "e2"
        await taken[1].settle()
        assert acks == ["b1", "b2"]

    asyncio.run(run())


def test_a_user_twice_in_one_batch_is_scored_once() -> None:
    async def run() -> None:
        pending, acks = PendingScores(), []
        pending.submit([_ctx("u1", "e1"), _ctx("u1", "e2")], _ack(acks, "b1"))
        taken = await pending.take(10)
        assert [ctx.trigger_event_id for ctx, _ in taken] == ["e2"]
        await _settle(taken)
        await _let_tasks_run()
        assert acks == ["b1"]

    asyncio.run(run())


def test_an_empty_batch_is_acknowledged_at_once() -> None:
    async def run() -> None:
        pending, acks = PendingScores(), []
        pending.submit([], _ack(acks, "empty"))
        await _let_tasks_run()
        assert acks == ["empty"] and len(pending) == 0

    asyncio.run(run())


def test_take_waits_for_users_and_takes_at_most_max_users_oldest_first() -> None:
    async def run() -> None:
        pending, acks = PendingScores(), []
        waiting = asyncio.ensure_future(pending.take(2))
        await _let_tasks_run()
        assert not waiting.done()  # nothing submitted: the scorer waits
        pending.submit([_ctx(f"u{i}", f"e{i}") for i in range(5)], _ack(acks, "b1"))
        first = await asyncio.wait_for(waiting, 1.0)
        assert [ctx.user_id for ctx, _ in first] == ["u0", "u1"]
        rest = await pending.take(10)
        assert [ctx.user_id for ctx, _ in rest] == ["u2", "u3", "u4"]
        await _settle(first)
        assert acks == []
        await _settle(rest)
        assert acks == ["b1"]
        again = asyncio.ensure_future(pending.take(2))
        await _let_tasks_run()
        assert not again.done()  # emptied: waits for the next submit
        pending.submit([_ctx("u9", "e9")], _ack(acks, "b2"))
        assert [c.user_id for c, _ in await asyncio.wait_for(again, 1.0)] == ["u9"]

    asyncio.run(run())


@pytest.mark.parametrize("scored_first", [True, False])
def test_a_user_taken_by_the_scorer_is_not_superseded_by_a_newer_click(scored_first: bool) -> None:
    """Once taken, a context is the scorer's: a newer click queues the user again."""

    async def run() -> None:
        pending, acks = PendingScores(), []
        before = _superseded()
        pending.submit([_ctx("u1", "e1")], _ack(acks, "b1"))
        taken = await pending.take(10)
        if scored_first:
            await _settle(taken)
        pending.submit([_ctx("u1", "e2")], _ack(acks, "b2"))
        assert _superseded() == before
        if not scored_first:
            await _settle(taken)
        assert acks == ["b1"]
        (again,) = await pending.take(10)
        assert again[0].trigger_event_id == "e2"
        await again[1].settle()
        assert acks == ["b1", "b2"]

    asyncio.run(run())
