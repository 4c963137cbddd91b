"""Micro-batches that start when data arrives, and acknowledgements the agent controls.

Faust's ``Stream.take_events(n, within)`` wakes on a fixed ``within`` timer, so
a record that arrives just after a wake-up waits up to ``within`` before its
agent sees it, and it acknowledges a batch as soon as the agent asks for the
next one. ``take_ready`` instead hands the agent everything buffered as soon
as the first record chunk arrives (after letting the rest of that fetch land),
so an idle agent handles a fetch at once and a busy one gets a larger batch
next time; and it leaves acknowledging to the agent (``ack_events``), which
acknowledges a batch only once its every output has been handed to the
producer, so a committed offset never runs ahead of a list not yet published.

It uses three parts of Faust's stream API that ``take_events`` itself uses:
``add_processor``, ``current_event`` and the private ``_enable_passive``, which
drains the channel through the processors in a background task. faust-streaming
0.15.3 offers no public hook for a buffer with deferred acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any


async def take_ready(
    stream: Any, max_events: int, gather_s: float = 0.0
) -> AsyncIterator[list[Any]]:
    """Yield lists of buffered Faust events (at most ``max_events``) as they arrive.

    ``gather_s`` > 0 keeps collecting that long after the first event of a batch
    arrives (for agents off the click-to-list path, whose writes then coalesce).
    Acknowledgement is the caller's: pass each list to ``ack_events`` when done.
    """
    buffer: list[Any] = []
    arrived = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def add_to_buffer(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready: a value arrived without its Faust event")
        buffer.append(event)
        arrived.set()
        if len(buffer) >= max_events:
            room.clear()
            await stream.wait(room)  # strict bound: the agent catches up first
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    while not stream.should_stop:
        if await stream.wait_for_stopped(arrived):
            break
        if gather_s > 0 and len(buffer) < max_events:
            await asyncio.sleep(gather_s)
        # The fetch that woke us may deliver more chunks (one per partition) in the
        # next few turns of the loop: take them in this batch.
        size = -1
        while len(buffer) != size:
            size = len(buffer)
            await asyncio.sleep(0)
        events = buffer[:]
        buffer.clear()
        arrived.clear()
        room.set()
        if events:
            yield events


async def ack_events(stream: Any, events: Iterable[Any]) -> None:
    """Acknowledge events ``take_ready`` yielded (their offsets may then be committed)."""
    for event in events:
        await stream.ack(event)
