"""Small confluent-kafka clients: a validating, de-duplicating click producer and typed consumers.

Producers stamp every message with its produce time (CreateTime, milliseconds):
recommendation latency is measured from it. Consumers parse with
``parse_record`` and skip (log and count) records that fail validation.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import BaseModel

from genre.core.config import KafkaConfig
from genre.schemas.records import ClickEvent, ItemUpsert, Recommendation
from genre.schemas.validation import MAX_PAYLOAD_BYTES, Rejection, parse_record

__all__ = [
    "ClickProducer",
    "ConsumeStats",
    "DeliveryError",
    "InvalidEvent",
    "click_message",
    "iter_recommendations",
    "iter_records",
    "producer_config",
    "readable_partitions",
]

log = logging.getLogger("genre.kafka")

T = TypeVar("T", bound=BaseModel)

#: Producer settings on top of ``KafkaConfig.client_config()``; ``config=`` overrides them.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    # Kafka's default (Java) partitioner for keyed records: a click keyed by its user id
    # lands in the partition that holds the user's state (murmur2 of the key), so the
    # fold reads it without a re-keying hop. librdkafka's own default hashes with CRC32.
    "partitioner": "murmur2_random",
    "compression.type": "none",
    "acks": "all",
    "message.timeout.ms": 30_000,
    # Off by default: tansu 0.6 does answer InitProducerId (idempotent produce
    # works), but event_id de-duplication already covers re-sends. Opt in via config=.
    "enable.idempotence": False,
}


def readable_partitions(consumer: Consumer, topic: str, timeout_s: float, fix: str) -> list[int]:
    """The partitions of ``topic``, sorted. When the broker does not have it readable, the
    consumer is closed and a KafkaException says which topic, why, and ``fix``."""
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        consumer.close()
        why = meta.error if meta is not None and meta.error else "no partitions"
        raise KafkaException(
            KafkaError(
                KafkaError.UNKNOWN_TOPIC_OR_PART, f"cannot read topic {topic} ({why}); {fix}"
            )
        )
    return sorted(meta.partitions)


class InvalidEvent(ValueError):
    """A record failed validation; ``reason`` is the stable code used for DLQ records."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


class DeliveryError(RuntimeError):
    """The broker did not accept some messages; raised by ``ClickProducer.flush``."""

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def click_message(click: ClickEvent) -> tuple[bytes, bytes]:
    """The (value, key) a click is produced with: compact JSON, keyed by its user id
    (UTF-8), so with ``PRODUCER_DEFAULTS``' murmur2 partitioner it lands in the
    partition that holds the user's state. ``ClickProducer`` and the pull API share it."""
    return click.to_bytes(), click.user_id.encode()


def producer_config(
    kafka: KafkaConfig, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """librdkafka settings of a click producer: the client config, ``PRODUCER_DEFAULTS``
    (murmur2 keys, acks=all), then ``overrides``."""
    conf: dict[str, Any] = {**kafka.client_config(), **PRODUCER_DEFAULTS, **(overrides or {})}
    conf.setdefault("logger", log)
    return conf


def _validate(model: type[T], record: T | Mapping[str, Any]) -> T:
    """Return ``record`` as ``model`` or raise ``InvalidEvent`` with parse_record's reason."""
    if isinstance(record, model):
        payload = record.to_bytes()  # type: ignore[attr-defined]
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidEvent(
                "payload_too_large",
                f"{len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
            )
        return record
    if not isinstance(record, Mapping):
        raise InvalidEvent(
            "not_an_object",
            f"expected a {model.__name__} or a dict, got {type(record).__name__}",
        )
    try:
        raw = orjson.dumps(dict(record))
    except TypeError as exc:
        raise InvalidEvent("invalid_json", f"the dict is not JSON-serialisable: {exc}") from None
    result = parse_record(model, raw)
    if isinstance(result, Rejection):
        raise InvalidEvent(result.reason, result.error)
    return result


class ClickProducer:
    """Validating producer for clicks (keyed by user_id) and item upserts (keyed by item_id).

    ``send`` skips an event whose ``event_id`` was already sent by this producer
    (the last ``dedup_size`` ids are remembered). Delivery failures are collected
    and raised by ``flush``. Use as a context manager to flush on exit.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        *,
        dedup_size: int = 100_000,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.kafka = kafka
        self.dedup_size = dedup_size
        self._producer = Producer(producer_config(kafka, config))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.skipped_duplicates = 0

    # -- producing --------------------------------------------------------

    def send(self, event: ClickEvent | Mapping[str, Any]) -> bool:
        """Validate and send a click; False (nothing sent) if its event_id was already sent."""
        click = _validate(ClickEvent, event)
        with self._lock:
            if click.event_id in self._seen:
                self.skipped_duplicates += 1
                return False
            self._seen[click.event_id] = None
            if len(self._seen) > self.dedup_size:
                self._seen.popitem(last=False)
        value, key = click_message(click)
        try:
            self._produce(self.kafka.topics.clicks.name, value, key, event_id=click.event_id)
        except BaseException:
            self._forget(click.event_id)
            raise
        return True

    def send_item(self, item: ItemUpsert | Mapping[str, Any]) -> None:
        """Validate and send an item upsert to the items topic, keyed by item_id."""
        upsert = _validate(ItemUpsert, item)
        self._produce(self.kafka.topics.items.name, upsert.to_bytes(), upsert.item_id.encode())

    def send_raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Send bytes as-is (no validation, no de-duplication)."""
        self._produce(topic, value, key, headers=headers)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        *,
        event_id: str | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.delivered += 1
                return
            self.failed += 1
            self._errors.append(f"{topic}: {err.str()} ({err.name()})")
            if event_id is not None:
                self._forget(event_id)  # not delivered: allow a later re-send

        kwargs: dict[str, Any] = {"on_delivery": on_delivery, "timestamp": _now_ms()}
        if headers:
            kwargs["headers"] = list(headers.items())
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self.sent += 1
        self._producer.poll(0)

    def _forget(self, event_id: str) -> None:
        with self._lock:
            self._seen.pop(event_id, None)

    # -- flushing ---------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every sent message; raise ``DeliveryError`` if any failed or timed out."""
        remaining = int(self._producer.flush(timeout))
        errors, self._errors = self._errors, []
        if not errors and not remaining:
            return
        where = self.kafka.bootstrap_servers
        parts = []
        if errors:
            shown = "; ".join(errors[:5]) + (
                f"; ... {len(errors) - 5} more" if len(errors) > 5 else ""
            )
            parts.append(f"{len(errors)} message(s) were rejected: {shown}")
        if remaining:
            parts.append(f"{remaining} message(s) still undelivered after {timeout:g}s")
        raise DeliveryError(
            f"Kafka delivery to {where} failed: {'. '.join(parts)}. "
            f"Check that the broker is up (`genre broker`) and the topics exist.",
            errors,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Flush (raising on failures)."""
        self.flush(timeout)

    def __enter__(self) -> ClickProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()
        else:  # don't mask the original error with a delivery error
            try:
                self.flush()
            except DeliveryError as err:
                log.warning("%s", err)

    def __repr__(self) -> str:
        return (
            f"ClickProducer({self.kafka.bootstrap_servers}, sent={self.sent}, "
            f"skipped_duplicates={self.skipped_duplicates}, failed={self.failed})"
        )


# -- consuming ------------------------------------------------------------


@dataclass
class ConsumeStats:
    """Counters for one ``iter_records`` run: messages seen, records yielded, rejects by reason."""

    received: int = 0
    yielded: int = 0
    invalid: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


class _TrueEnd:
    """Start "latest" reads at the real end of each partition.

    tansu 0.6 answers ListOffsets(latest) with the last batch's base offset + 1,
    not the high watermark, so librdkafka's OFFSET_END re-reads the tail of the
    last batch. We start one record before the reported end instead; the first
    fetch carries the true high watermark, and records below it are skipped.
    Against a correct broker this costs one skipped record per partition.
    """

    def __init__(self, consumer: Consumer, topic: str, timeout_s: float) -> None:
        self.consumer = consumer
        self.topic = topic
        self.timeout_s = timeout_s
        self.floor: dict[int, int | None] = {}  # partition -> end at start (None: not fetched)

    def place(self, tps: list[TopicPartition]) -> None:
        """Set each partition's start offset just before its reported end."""
        for tp in tps:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, tp.partition), timeout=self.timeout_s
            )
            if high > low:
                tp.offset = high - 1
                self.floor[tp.partition] = None
            else:
                tp.offset = OFFSET_END

    def skip(self, msg: Message) -> bool:
        """True for a record that was already in the partition when reading started."""
        p = int(msg.partition() or 0)
        if p not in self.floor:
            return False
        floor = self.floor[p]
        if floor is None:
            tp = TopicPartition(self.topic, p)
            floor = int(self.consumer.get_watermark_offsets(tp, cached=True)[1])
            self.floor[p] = floor
        if int(msg.offset() or 0) < floor:
            return True
        del self.floor[p]
        return False


def _assign_all(consumer: Consumer, topic: str, from_beginning: bool, end: _TrueEnd) -> None:
    md = consumer.list_topics(topic, timeout=end.timeout_s)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        reason = tmd.error if tmd is not None else "not in metadata"
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"{topic}: {reason}"))
    parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(tmd.partitions)]
    if not from_beginning:
        end.place(parts)
    consumer.assign(parts)


def _subscribe(consumer: Consumer, topic: str, from_beginning: bool, end: _TrueEnd) -> None:
    def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
        if from_beginning or not parts:
            return
        committed = c.committed(parts, timeout=end.timeout_s)
        end.place([tp for tp in committed if tp.offset < 0])
        c.assign(committed)

    consumer.subscribe([topic], on_assign=on_assign)


def _caught_up(consumer: Consumer, at_end: set[int]) -> bool:
    assigned = {tp.partition for tp in consumer.assignment()}
    return bool(assigned) and assigned <= at_end


def iter_records(kafka: KafkaConfig, topic: str, model: type[T], **kwargs: Any) -> Iterator[T]:
    """Yield ``model`` records from ``topic`` (see ``iter_timed_records``)."""
    for _, record in iter_timed_records(kafka, topic, model, **kwargs):
        yield record


def iter_timed_records(
    kafka: KafkaConfig,
    topic: str,
    model: type[T],
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    timeout_s: float | None = None,
    stop_at_end: bool = False,
    max_records: int | None = None,
    stats: ConsumeStats | None = None,
    on_invalid: Callable[[Message, Rejection], None] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Iterator[tuple[float, T]]:
    """Yield ``(record timestamp in Unix seconds, record)`` pairs of ``model`` records
    from ``topic``; invalid ones are logged, counted and skipped.

    Without ``group_id`` all partitions are assigned directly (no consumer group,
    no commits); with it the consumer joins the group and auto-commits.
    ``timeout_s`` ends the iteration after that many seconds without a message;
    ``stop_at_end`` ends it once every assigned partition is read to its end.
    """
    stats = stats if stats is not None else ConsumeStats()
    conf: dict[str, Any] = {
        **kafka.consumer_config(),
        "group.id": group_id or f"genre-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": group_id is not None,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "logger": log,
    }
    if group_id is not None:
        conf.update(kafka.group_config())
    if stop_at_end:
        conf["enable.partition.eof"] = True
    conf.update(config or {})
    consumer = Consumer(conf)
    try:
        end = _TrueEnd(consumer, topic, kafka.connect_timeout_s)
        if group_id is None:
            _assign_all(consumer, topic, from_beginning, end)
        else:
            _subscribe(consumer, topic, from_beginning, end)
        at_end: set[int] = set()  # partitions whose last poll was end-of-partition
        idle_since = time.monotonic()
        while True:
            if timeout_s is not None:
                left = timeout_s - (time.monotonic() - idle_since)
                if left <= 0:
                    return
                wait = min(0.5, left)
            else:
                wait = 0.5
            msg = consumer.poll(wait)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(int(msg.partition() or 0))
                    if stop_at_end and _caught_up(consumer, at_end):
                        return
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error on %s: %s", topic, err.str())
                continue
            at_end.discard(int(msg.partition() or 0))
            if end.skip(msg):
                continue
            idle_since = time.monotonic()
            stats.received += 1
            result = parse_record(model, msg.value())
            if isinstance(result, Rejection):
                stats.invalid += 1
                stats.reasons[result.reason] += 1
                log.warning(
                    "skipping invalid %s at %s[%d]@%d: %s: %s",
                    model.__name__,
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    result.reason,
                    result.error,
                )
                if on_invalid is not None:
                    on_invalid(msg, result)
            else:
                stats.yielded += 1
                yield msg.timestamp()[1] / 1000.0, result
                if max_records is not None and stats.yielded >= max_records:
                    return
    finally:
        consumer.close()


def iter_recommendations(
    kafka: KafkaConfig,
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Iterator[Recommendation]:
    """Yield ``Recommendation`` records from the recommendations topic (see ``iter_records``)."""
    return iter_records(
        kafka,
        kafka.topics.recommendations.name,
        Recommendation,
        group_id=group_id,
        from_beginning=from_beginning,
        timeout_s=timeout_s,
        **kwargs,
    )
