"""The durable embedded broker: records, committed offsets and a worker's state survive
kill -9 of tansu and of its object store, and a restart of both."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from genre.core.broker import EmbeddedBroker, ensure_topics
from genre.core.config import DURABLE_FETCH_WAIT_MS

from .conftest import click, running_pipeline

pytestmark = pytest.mark.broker

RECORDS = 2000


def _kill_both(broker: EmbeddedBroker) -> None:
    """SIGKILL tansu and the object store, the way a crash or an OOM kill would."""
    store = broker.object_store
    assert broker.pid is not None and store is not None and store.pid is not None
    os.kill(broker.pid, signal.SIGKILL)
    os.kill(store.pid, signal.SIGKILL)
    broker.stop()  # reaps both; nothing left to signal


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """Every record of ``topic`` from the start, read partition by partition (assign)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    idle = 0
    while idle < 20:
        msg = consumer.poll(0.5)
        if msg is None:
            idle += 1
        elif msg.error() is None:
            idle = 0
            values.append(msg.value())
    consumer.close()
    return values


def test_records_and_committed_offsets_survive_killing_broker_and_store(
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log", storage_dir=tmp_path / "data")
    broker.start()
    try:
        ensure_topics(broker.bootstrap, {"durable": 3})
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for i in range(RECORDS):
            producer.produce("durable", key=f"k{i % 50}".encode(), value=f"v{i}".encode())
        assert producer.flush(30) == 0
        committed = [TopicPartition("durable", p, 100 + p) for p in range(3)]
        group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g1"})
        group.commit(offsets=committed, asynchronous=False)
        group.close()

        _kill_both(broker)
        broker.start()

        values = _read_all(broker.bootstrap, "durable", 3)
        assert sorted(values) == sorted(f"v{i}".encode() for i in range(RECORDS))
        group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g1"})
        after = group.committed([TopicPartition("durable", p) for p in range(3)], timeout=30)
        group.close()
        assert [(tp.partition, tp.offset) for tp in after] == [(p, 100 + p) for p in range(3)]
        # The object store keeps plain files under the data dir.
        assert any((tmp_path / "data" / "tansu").rglob("*"))
    finally:
        broker.stop()


@pytest.fixture
def durable_broker(tmp_path: Path) -> Any:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log", storage_dir=tmp_path / "broker-data")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_worker_carries_on_with_its_state_after_the_broker_and_store_die(
    durable_broker: EmbeddedBroker, encoder_dir: Path, tmp_path: Path
) -> None:
    """On memory storage the same restart stops the worker for good (lost state,
    tests/integration/test_faults.py); on durable storage it carries on."""
    # write_config spells out every key, so the durable fetch wait is given as is.
    kafka = {
        "embedded": {"port": durable_broker.port, "durable": True},
        "fetch_max_wait_ms": DURABLE_FETCH_WAIT_MS,
    }
    with running_pipeline(tmp_path, durable_broker.bootstrap, encoder_dir, kafka=kafka) as p:
        p.send_clicks([click(f"d-{i}", "d-user", f"space-{i}") for i in range(3)])
        p.recommendations(until_triggers={"d-2"})
        p.worker.stop()

        _kill_both(durable_broker)
        durable_broker.start()

        p.worker.start(ready_timeout_s=180)
        p.send_clicks([click("d-3", "d-user", "space-3")])
        p.recommendations(until_triggers={"d-3"}, timeout_s=120)
        assert p.worker.running, p.worker.log_tail()
        state = p.user_state("d-user")
        assert state is not None and state["clicks"] == 4, state
