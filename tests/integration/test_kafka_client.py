"""ClickProducer and iter_records against the embedded tansu broker."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message, TopicPartition

from genre.core.broker import ensure_topics, free_port
from genre.core.config import KafkaConfig, TopicsConfig, TopicSpec
from genre.core.kafka_client import (
    ClickProducer,
    ConsumeStats,
    DeliveryError,
    InvalidEvent,
    iter_recommendations,
    iter_records,
)
from genre.schemas.records import ClickEvent, ItemUpsert, Recommendation, RecommendedItem

pytestmark = pytest.mark.broker

TS = 1_700_000_000.0


@pytest.fixture
def kafka(broker) -> KafkaConfig:
    """A KafkaConfig for the session broker with fresh, uniquely named topics."""
    suffix = uuid.uuid4().hex[:10]
    topics = TopicsConfig(
        clicks=TopicSpec(name=f"clicks-{suffix}", partitions=3),
        items=TopicSpec(name=f"items-{suffix}", partitions=2),
        recommendations=TopicSpec(name=f"recs-{suffix}", partitions=2),
        dlq=TopicSpec(name=f"dlq-{suffix}", partitions=1),
    )
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap, topics=topics)
    wanted = ("clicks", "items", "recommendations", "dlq")
    ensure_topics(
        broker.bootstrap, {getattr(topics, k).name: getattr(topics, k).partitions for k in wanted}
    )
    return cfg


def _click(i: int, user: str = "u1") -> ClickEvent:
    return ClickEvent(event_id=f"e{i}", user_id=user, item_id=f"i{i}", ts=TS + i)


def _raw_messages(bootstrap: str, topic: str, expect: int, timeout_s: float = 20) -> list[Message]:
    """All messages in ``topic`` (assigned from the start, no group); waits for ``expect``."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, -2) for p in parts])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
            elif msg is None and len(got) >= expect:
                break  # one quiet poll after reaching the count: nothing extra arrived
    finally:
        c.close()
    return got


def test_send_validates_dicts(kafka: KafkaConfig) -> None:
    p = ClickProducer(kafka)
    good = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": TS}
    cases = {
        "missing_field": ({k: v for k, v in good.items() if k != "user_id"}, "user_id"),
        "unknown_field": ({**good, "colour": "red"}, "colour"),
        "invalid_value": ({**good, "ts": TS * 1000}, "milliseconds"),
        "wrong_type": ({**good, "ts": "yesterday"}, "ts"),
    }
    for reason, (payload, needle) in cases.items():
        with pytest.raises(InvalidEvent) as info:
            p.send(payload)
        assert info.value.reason == reason
        assert needle in info.value.error and needle in str(info.value)
    with pytest.raises(InvalidEvent) as info:
        p.send(["not", "a", "dict"])  # type: ignore[arg-type]
    assert info.value.reason == "not_an_object"
    with pytest.raises(InvalidEvent) as info:
        p.send({**good, "context": {"k": object()}})
    assert info.value.reason == "invalid_json"
    with pytest.raises(InvalidEvent) as info:
        p.send_item({"item_id": "x", "title": "t" * 600})
    assert info.value.reason == "invalid_value"
    assert p.sent == 0 and p.skipped_duplicates == 0
    assert p.send(good) is True  # a valid dict goes through pydantic and is sent
    p.flush(10)
    assert p.delivered == 1


def test_duplicates_are_not_resent(kafka: KafkaConfig, broker) -> None:
    t0 = time.time()
    with ClickProducer(kafka) as p:
        assert all(p.send(_click(i, user=f"u{i % 2}")) for i in range(5))
        assert p.send(_click(1, user="u1")) is False
        assert p.send(_click(3).model_dump(mode="json")) is False  # same id, as a dict
        assert p.send(_click(4)) is False
        assert p.sent == 5 and p.skipped_duplicates == 3
    t1 = time.time()
    assert p.delivered == 5

    msgs = _raw_messages(broker.bootstrap, kafka.topics.clicks.name, expect=5)
    ids = sorted(ClickEvent.from_bytes(m.value()).event_id for m in msgs)
    assert ids == [f"e{i}" for i in range(5)]
    for m in msgs:
        event = ClickEvent.from_bytes(m.value())
        assert m.key() == event.user_id.encode()
        kind, ms = m.timestamp()
        assert kind == TIMESTAMP_CREATE_TIME
        assert t0 * 1000 - 5 <= ms <= t1 * 1000 + 5  # produce time, not the event's ts
    # keyed by user: each user's clicks land in one partition
    parts = {}
    for m in msgs:
        parts.setdefault(m.key(), set()).add(m.partition())
    assert all(len(v) == 1 for v in parts.values())


def test_dedup_window_evicts_oldest(kafka: KafkaConfig) -> None:
    with ClickProducer(kafka, dedup_size=2) as p:
        assert [p.send(_click(i)) for i in (0, 1, 2)] == [True, True, True]
        assert p.send(_click(2)) is False
        assert p.send(_click(0)) is True  # forgotten: only the last 2 ids are kept
    assert p.sent == 4 and p.skipped_duplicates == 1


def test_iter_records_roundtrip_skips_invalid(kafka: KafkaConfig) -> None:
    recs = [
        Recommendation(
            user_id=f"u{i}",
            items=[RecommendedItem(item_id="i9", score=0.5, source="co_click", reason="because")],
            model_version="m1",
            trigger_event_id=f"e{i}",
            generated_at=TS,
            latency_ms=12.5,
        )
        for i in range(4)
    ]
    topic = kafka.topics.recommendations.name
    with ClickProducer(kafka) as p:
        p.send_raw(topic, recs[0].to_bytes(), b"u0")
        p.send_raw(topic, b"{not json", b"u0")
        for r in recs[1:3]:
            p.send_raw(topic, r.to_bytes(), r.user_id.encode())
        p.send_raw(topic, b'{"user_id": "u9"}', None)
        p.send_raw(topic, recs[3].to_bytes(), b"u3")

    stats = ConsumeStats()
    rejected = []
    got = list(
        iter_recommendations(
            kafka,
            from_beginning=True,
            stop_at_end=True,
            timeout_s=20,
            stats=stats,
            on_invalid=lambda msg, rej: rejected.append((msg.offset(), rej.reason)),
        )
    )
    assert all(isinstance(r, Recommendation) for r in got)
    assert sorted(got, key=lambda r: r.user_id) == recs
    assert stats.received == 6 and stats.yielded == 4 and stats.invalid == 2
    assert stats.reasons == {"invalid_json": 1, "missing_field": 1}
    assert sorted(r for _, r in rejected) == ["invalid_json", "missing_field"]

    # tail mode (not from the beginning) with nothing new: ends after the idle timeout
    t0 = time.monotonic()
    assert list(iter_recommendations(kafka, timeout_s=1.0)) == []
    assert time.monotonic() - t0 < 8


def test_tail_sees_only_new_records(kafka: KafkaConfig) -> None:
    """Reading from "latest" skips old records (tansu's ListOffsets is off by a batch)."""
    topic = kafka.topics.clicks.name
    with ClickProducer(kafka) as p:
        for i in range(8):  # one batch per partition: the case tansu reports wrongly
            p.send(_click(i, user=f"u{i}"))
    got: list[ClickEvent] = []
    tail = threading.Thread(
        target=lambda: got.extend(
            iter_records(kafka, topic, ClickEvent, timeout_s=10, max_records=3)
        )
    )
    tail.start()
    time.sleep(1.5)
    with ClickProducer(kafka) as p:
        for i in range(100, 103):
            p.send(_click(i, user=f"u{i}"))
    tail.join(20)
    assert not tail.is_alive()
    assert sorted(e.event_id for e in got) == ["e100", "e101", "e102"]

    # a new consumer group starting at "latest" also skips the old records
    group = f"g-{uuid.uuid4().hex[:8]}"
    assert list(iter_records(kafka, topic, ClickEvent, group_id=group, timeout_s=8)) == []


def test_iter_records_consumer_group_commits(kafka: KafkaConfig) -> None:
    with ClickProducer(kafka) as p:
        for i in range(6):
            p.send(_click(i, user=f"u{i}"))
    group = f"g-{uuid.uuid4().hex[:8]}"
    topic = kafka.topics.clicks.name
    first = list(
        iter_records(
            kafka,
            topic,
            ClickEvent,
            group_id=group,
            from_beginning=True,
            stop_at_end=True,
            timeout_s=30,
        )
    )
    assert sorted(e.event_id for e in first) == [f"e{i}" for i in range(6)]
    # everything was committed on close: the same group has nothing left
    again = list(
        iter_records(
            kafka,
            topic,
            ClickEvent,
            group_id=group,
            from_beginning=True,
            stop_at_end=True,
            timeout_s=5,
        )
    )
    assert again == []


def test_max_records(kafka: KafkaConfig) -> None:
    with ClickProducer(kafka) as p:
        for i in range(10):
            p.send(_click(i))
    got = list(
        iter_records(
            kafka,
            kafka.topics.clicks.name,
            ClickEvent,
            from_beginning=True,
            max_records=3,
            timeout_s=20,
        )
    )
    assert len(got) == 3


def test_send_item_keyed_by_item_id(kafka: KafkaConfig, broker) -> None:
    with ClickProducer(kafka) as p:
        p.send_item(ItemUpsert(item_id="m1", title="Toy Story", ts=TS))
        p.send_item({"item_id": "m2", "title": "GoldenEye", "tags": ["Action"], "ts": TS})
    msgs = _raw_messages(broker.bootstrap, kafka.topics.items.name, expect=2)
    by_key = {m.key(): ItemUpsert.from_bytes(m.value()) for m in msgs}
    assert set(by_key) == {b"m1", b"m2"}
    assert by_key[b"m2"].tags == ["Action"]


def test_delivery_failure_raised_on_flush() -> None:
    dead = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}")
    p = ClickProducer(dead, config={"message.timeout.ms": 1000, "log_level": 0})
    assert p.send(_click(1)) is True
    with pytest.raises(DeliveryError) as info:
        p.flush(10)
    msg = str(info.value)
    assert dead.bootstrap_servers in msg and "1 message(s) were rejected" in msg
    assert "genre.clicks" in msg and "timed out" in msg.lower()
    assert p.failed == 1 and len(info.value.errors) == 1
    # an undelivered event may be sent again
    assert p.send(_click(1)) is True
    with pytest.raises(DeliveryError):
        p.flush(10)
    p.flush(1)  # errors are reported once
