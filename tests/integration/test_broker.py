"""Integration tests for the embedded tansu broker and the Kafka admin helpers."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from genre.core.broker import (
    BrokerError,
    EmbeddedBroker,
    ensure_topics,
    free_port,
    tansu_binary,
    wait_for_broker,
)

pytestmark = pytest.mark.broker


def _partitions(bootstrap: str, topic: str) -> int:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return len(md.topics[topic].partitions)


def test_produce_consume_roundtrip(broker, topic_factory):
    topic = topic_factory("rt", partitions=3)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(20)}
    for k, v in sent.items():
        p.produce(topic, key=k, value=v)
    assert p.flush(10) == 0

    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # tansu completes a group join after ~session.timeout/2 (45s default
            # -> ~23s); a short session keeps the test at ~1s.
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 200,
        }
    )
    c.subscribe([topic])
    got: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 30
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            got[msg.key()] = msg.value()
    finally:
        c.close()
    assert got == sent


def test_ensure_topics_partitions_and_idempotent(broker):
    a, b = f"ea-{uuid.uuid4().hex[:8]}", f"eb-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, {a: 4, b: 1})
    assert _partitions(broker.bootstrap, a) == 4
    assert _partitions(broker.bootstrap, b) == 1
    # second call (one existing, one new) is fine and leaves partitions alone
    c = f"ec-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, {a: 4, c: 2})
    ensure_topics(broker.bootstrap, {a: 4, b: 1, c: 2})
    assert _partitions(broker.bootstrap, a) == 4
    assert _partitions(broker.bootstrap, c) == 2


def test_wait_for_broker_closed_port_raises_fast():
    addr = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BrokerError) as info:
        wait_for_broker(addr, timeout_s=2)
    elapsed = time.monotonic() - t0
    assert elapsed < 6, elapsed
    msg = str(info.value)
    assert addr in msg
    assert "genre broker" in msg and "bootstrap_servers" in msg


def test_wait_for_broker_ok(broker):
    wait_for_broker(broker.bootstrap, timeout_s=5)


def test_tansu_binary_verifies_hash(monkeypatch):
    monkeypatch.delenv("GENRE_TANSU_BIN", raising=False)
    monkeypatch.delenv("GENRE_TANSU_SKIP_HASH", raising=False)
    path = tansu_binary()
    assert path.is_file()


def test_tansu_binary_rejects_tampered_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("GENRE_TANSU_SKIP_HASH", raising=False)
    monkeypatch.delenv("GENRE_TANSU_BIN", raising=False)
    bad = tmp_path / "tansu"
    shutil.copy2(tansu_binary(), bad)
    with bad.open("ab") as f:
        f.write(b"\0")
    monkeypatch.setenv("GENRE_TANSU_BIN", str(bad))
    with pytest.raises(BrokerError) as info:
        tansu_binary()
    msg = str(info.value)
    assert "sha256" in msg and str(bad) in msg and "genre-recsys[embedded]" in msg
    monkeypatch.setenv("GENRE_TANSU_SKIP_HASH", "1")
    assert tansu_binary() == bad


def test_tansu_binary_missing_override(tmp_path, monkeypatch):
    monkeypatch.setenv("GENRE_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match="GENRE_TANSU_BIN"):
        tansu_binary()


def test_embedded_broker_restart_same_port_loses_data(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "b.log") as b:
        port, pid = b.port, b.pid
        ensure_topics(b.bootstrap, {"keep": 2})
        b.restart()
        assert b.port == port and b.pid != pid
        wait_for_broker(b.bootstrap, 5)
        md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
        assert "keep" not in md.topics  # memory storage: restart wipes everything
    assert b.pid is None


def test_embedded_broker_port_in_use_reports_log(tmp_path, broker):
    b = EmbeddedBroker(port=broker.port, log_path=tmp_path / "clash.log")
    with pytest.raises(BrokerError) as info:
        b.start(timeout_s=10)
    assert str(broker.port) in str(info.value)
    assert b.pid is None
