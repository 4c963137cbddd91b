"""POST /v1/events: validate a body's clicks as ingest does, then produce and await delivery.

Validation is ``parse_record`` on each event's raw JSON (``split_events`` cuts the
body without re-serialising it), the function the fold runs on every message of
``genre.clicks``; a refused event gets the reason code its dead letter would carry.
Clicks are produced with ``click_message`` and ``producer_config`` (murmur2 keys by
user id, acks=all), as ``ClickProducer`` does. A request is answered only once the
broker acknowledged each event or ``api.delivery_timeout_s`` passed
(librdkafka retries meanwhile): nothing reported accepted can be lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from genre.core.config import GenreConfig
from genre.core.kafka_client import click_message, producer_config
from genre.core.telemetry import METRICS
from genre.schemas import ClickEvent, Rejection, parse_record
from genre.schemas.api import RecordError, split_events

log = logging.getLogger("genre.api")


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a whole request was refused before any event was sent."""

    status: int
    error: str
    reason: str | None = None
    records: tuple[RecordError, ...] = ()


def parse_events(body: bytes, max_events: int) -> list[ClickEvent] | Refused:
    """The body's clicks, or why not: 400 (not an object or array), 413 (too many),
    422 (some events invalid: every bad one with its reason)."""
    raw = split_events(body)
    if isinstance(raw, Rejection):
        return Refused(400, f"{raw.error}", raw.reason)
    if len(raw) > max_events:
        return Refused(
            413,
            f"{len(raw)} events in one request; at most {max_events} (api.max_events): "
            "split the batch",
            "too_many_events",
        )
    clicks: list[ClickEvent] = []
    bad: list[RecordError] = []
    for index, payload in enumerate(raw):
        result = parse_record(ClickEvent, payload)
        if isinstance(result, Rejection):
            bad.append(RecordError(index=index, reason=result.reason, error=result.error))
        else:
            clicks.append(result)
    if bad:
        return Refused(
            422,
            f"{len(bad)} of {len(raw)} events are invalid and nothing was sent; fix them "
            "and send the request again",
            records=tuple(bad),
        )
    return clicks


@dataclass(frozen=True, slots=True)
class Delivery:
    """Which events the broker acknowledged, and which it did not (with the first error)."""

    accepted: list[str]
    not_accepted: list[str]
    error: str = ""


class EventSender:
    """A confluent-kafka producer whose deliveries resolve asyncio futures.

    ``message.timeout.ms`` is the API's delivery budget, so librdkafka retries a
    broker that is briefly away for that long and then reports the event failed.
    """

    def __init__(self, config: GenreConfig) -> None:
        self.topic = config.kafka.topics.clicks.name
        self.timeout_s = config.api.delivery_timeout_s
        self._producer = Producer(
            producer_config(config.kafka, {"message.timeout.ms": int(self.timeout_s * 1000)})
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="api-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, clicks: Sequence[ClickEvent]) -> Delivery:
        """Produce ``clicks`` in order and wait for each acknowledgement (bounded)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[str | None]] = []
        for click in clicks:
            fut: asyncio.Future[str | None] = loop.create_future()
            futures.append(fut)
            value, key = click_message(click)
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, on_delivery=_resolver(loop, fut)
                )
            except (BufferError, KafkaException) as exc:  # local queue full, or refused
                fut.set_result(f"not queued: {exc}")
        done, _ = await asyncio.wait(futures, timeout=self.timeout_s + 1.0)
        accepted, missing, error = [], [], ""
        for click, fut in zip(clicks, futures, strict=True):
            outcome = fut.result() if fut in done else f"no answer within {self.timeout_s:g}s"
            if outcome is None:
                accepted.append(click.event_id)
            else:
                missing.append(click.event_id)
                error = error or outcome
        METRICS.events_out.labels(self.topic).inc(len(accepted))
        return Delivery(accepted, missing, error)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued and stop the poller."""
        self._stop.set()
        self._poller.join(1.0)
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("%d click(s) still undelivered when the API stopped", left)


def _resolver(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[str | None]
) -> Callable[[KafkaError | None, Message], None]:
    """A delivery callback (librdkafka's poller thread) that resolves ``fut`` on ``loop``:
    None when acknowledged, else the error text."""

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        outcome = None if err is None else f"{err.str()} ({err.name()})"
        loop.call_soon_threadsafe(_settle, fut, outcome)

    return on_delivery


def _settle(fut: asyncio.Future[str | None], outcome: str | None) -> None:
    if not fut.done():
        fut.set_result(outcome)
