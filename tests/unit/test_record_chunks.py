"""Record chunks: one Faust message per partition per fetch, acked as its whole offset range."""

from __future__ import annotations

from collections import namedtuple

import faust
import pytest
from faust.types import TP

from genre.streams import transport
from genre.streams.transport import RecordChunk

Record = namedtuple("Record", "offset timestamp timestamp_type serialized_value_size")
TOPIC = "chunked"


@pytest.fixture()
def consumer(monkeypatch: pytest.MonkeyPatch):
    app = faust.App("chunk-test", broker=f"{transport.SCHEME}://127.0.0.1:1", autodiscover=False)
    monkeypatch.setitem(transport.CHUNKED_TOPICS, "chunk-test", frozenset({TOPIC}))
    consumer = app.consumer  # built, never started: no broker needed
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    return consumer


def chunk(first: int, last: int, ack_from: int | None = None) -> RecordChunk:
    records = [Record(o, 1_700_000_000_000, 0, 10) for o in range(first, last + 1)]
    return RecordChunk(TP(TOPIC, 0), records, first if ack_from is None else ack_from, 1)


def test_a_chunk_commits_past_all_its_records(consumer) -> None:
    tp = TP(TOPIC, 0)
    assert consumer.ack(chunk(0, 99))
    assert consumer._new_offset(tp) == 100


def test_commit_waits_for_an_earlier_chunk(consumer) -> None:
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    first, second = chunk(10, 49), chunk(50, 99)
    assert consumer.ack(second)
    assert consumer._new_offset(tp) is None  # 10..49 not finished: no commit past them
    assert consumer.ack(first)
    assert consumer._new_offset(tp) == 100


def test_a_gap_before_a_chunk_is_acked_with_it(consumer) -> None:
    tp = TP(TOPIC, 0)
    consumer.ack(chunk(0, 9))
    assert consumer._new_offset(tp) == 10
    consumer._committed_offset[tp] = 10
    # offsets 10 and 11 were skipped by the broker (e.g. transaction markers)
    assert consumer.ack(chunk(12, 20, ack_from=10))
    assert consumer._new_offset(tp) == 21


def test_a_chunk_is_acked_once(consumer) -> None:
    c = chunk(0, 9)
    assert consumer.ack(c)
    assert not consumer.ack(c)
    assert consumer._n_acked == 10
