"""Micro-batch messages on internal topics: partitioning and size limits."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from genre.schemas import CoClicks
from genre.streams import app as stream_app
from genre.streams.app import _sized_batches, partition_for, table_key


def test_partition_for_matches_the_producers_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for n in (1, 4, 7, 16):
        parts = list(range(n))
        for key in ("u1", "user-ü-42", "syn-u123456", "x" * 100):
            assert partition_for(key, n) == partitioner(table_key(key), parts, parts)


def test_producers_key_clicks_the_way_the_fold_reads_them() -> None:
    """GENRE's producers hash keys with Kafka's murmur2 (librdkafka's own default is
    CRC32), so a click keyed by its user id lands in the partition ``partition_for`` names,
    the one that holds the user's state, and the fold reads it without re-keying."""
    from genre.core.kafka_client import PRODUCER_DEFAULTS

    assert PRODUCER_DEFAULTS["partitioner"] == "murmur2_random"
    assert table_key("user-ü") == "user-ü".encode()  # table keys: raw UTF-8, no JSON quotes


def test_oversized_batches_are_split_and_nothing_is_lost(monkeypatch) -> None:
    monkeypatch.setattr(stream_app, "MAX_BATCH_BYTES", 2000)
    records = [(f"item-{i}", ["n"] * 5, 0.0, 1.7e9) for i in range(100)]
    parts = list(_sized_batches(records, CoClicks.encode))
    assert len(parts) > 1
    assert all(len(p) <= 2000 for p in parts)
    decoded = [r for p in parts for r in CoClicks.from_trusted_bytes(p)]
    assert decoded == records  # same records, same order


def test_a_small_batch_is_one_message() -> None:
    records = [("a", [], 0.0, 1.7e9)]
    assert len(list(_sized_batches(records, CoClicks.encode))) == 1
