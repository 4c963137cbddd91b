"""Follow the ``item_vectors`` topic: every item's vector and payload, held in this process.

A worker of a split role (``genre worker --role stream`` or ``scorer``) runs no
item encoder, yet needs item vectors: the stream role to update user vectors,
the scorer for candidates, ranking and explanations. The encoder role writes
each item's latest vector to a compacted topic keyed by item; this follower
reads every partition of it from the beginning and keeps the process's item
catalogue (and exact index, in Qdrant local mode) equal to it. The worker's
``/ready`` answers 503 until it has read to the end once.

Written by hand, on a plain consumer without a group: a Faust GlobalTable would
replay and follow the topic too, but it keeps its own copy of every item (JSON
with base64 vectors) beside the catalogue and index, and offers no hook when a
write from another process is applied, which the index and the ranker's cache
of item representations need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from genre.core.features import decode_vector
from genre.core.kafka_client import readable_partitions
from genre.core.telemetry import METRICS
from genre.schemas import ItemVector, Rejection, parse_record
from genre.streams.app import GenreStreams

log = logging.getLogger("genre.item_vectors")

#: Most records taken per poll.
POLL_BATCH = 1_000
#: Longest wait of one poll, in seconds (also how fast the task notices a stop).
POLL_WAIT_S = 0.2


class ItemVectorFollower:
    """Applies the ``item_vectors`` topic to ``streams.catalog`` and ``streams.index``."""

    def __init__(
        self, streams: GenreStreams, on_change: Callable[[list[str]], None] | None = None
    ) -> None:
        """``on_change(ids)`` runs after items change or are deleted (cache invalidation)."""
        self.streams = streams
        self.on_change = on_change
        self.topic = streams.config.kafka.topics.item_vectors.name
        self.dim = streams.config.encoder.dim
        self.partitions: set[int] = set()
        #: Partitions read to their end at least once (never un-marked: new records
        #: arriving while others are still being read must not hold readiness back).
        self._at_end: set[int] = set()
        #: Set once every partition has been read to its end; agents that need item
        #: vectors wait for it before their first batch (``GenreStreams.item_vectors_read``).
        self.read = asyncio.Event()
        streams.item_vectors_read = self.read
        #: librdkafka consumers are not thread-safe: every call runs on this one thread.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="item-vectors")
        streams.ready["item_vectors"] = False

    @property
    def caught_up(self) -> bool:
        """Whether every partition has been read to its end at least once."""
        return self.read.is_set()

    async def run(self) -> None:
        """Forever: poll the topic and apply what arrives (a background task)."""
        loop = asyncio.get_running_loop()
        consumer: Consumer | None = None
        try:
            consumer = await loop.run_in_executor(self._thread, self._open)
            while True:
                messages = await loop.run_in_executor(
                    self._thread, consumer.consume, POLL_BATCH, POLL_WAIT_S
                )
                await self.apply(messages)
        finally:
            with contextlib.suppress(RuntimeError):  # the interpreter is shutting down
                if consumer is not None:
                    # Queued behind any poll still running on the thread.
                    self._thread.submit(consumer.close)
                self._thread.shutdown(wait=False)

    def _open(self) -> Consumer:
        kafka = self.streams.config.kafka
        consumer = Consumer(
            {
                **kafka.consumer_config(),
                "group.id": f"{self.streams.app.conf.id}-item-vectors-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        fix = (
            "create it with cleanup.policy=compact (kafka.topics.item_vectors; `genre worker` "
            "creates missing topics at start) and check this client may read it"
        )
        self.partitions = set(
            readable_partitions(consumer, self.topic, kafka.connect_timeout_s, fix)
        )
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions])
        return consumer

    async def apply(self, messages: list[Any]) -> int:
        """Apply polled messages (latest per item wins); returns how many items changed."""
        latest: dict[str, Any] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(int(msg.partition() or 0))
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("item-vectors consumer error: %s", err.str())
                continue
            key = msg.key()
            if key is None:
                await self._reject(msg, "missing_key", "item vectors are keyed by item id")
                continue
            latest[key.decode("utf-8", "replace")] = msg
        if messages:
            METRICS.events_in.labels(self.topic).inc(sum(m.error() is None for m in messages))
        deletes = [key for key, msg in latest.items() if msg.value() is None]
        upserts: list[tuple[ItemVector, np.ndarray]] = []
        for key, msg in latest.items():
            if msg.value() is None:
                continue
            record = parse_record(ItemVector, msg.value())
            if isinstance(record, Rejection):
                await self._reject(msg, record.reason, record.error)
            elif record.item_id != key:
                await self._reject(msg, "invalid_value", f"key {key!r} != item_id")
            else:
                vector, error = self._vector(record)
                if vector is None:
                    await self._reject(msg, "invalid_value", error)
                else:
                    upserts.append((record, vector))
        self._store(upserts, deletes)
        if not self.caught_up and self.partitions and self.partitions <= self._at_end:
            self.streams.ready["item_vectors"] = True
            self.read.set()
            log.info("item vectors: %d items read from %s", len(self.streams.catalog), self.topic)
        return len(upserts) + len(deletes)

    def _vector(self, record: ItemVector) -> tuple[np.ndarray | None, str]:
        """The record's vector, or None and why it is unusable. A bad record must not
        stop the follower: the topic is compacted and re-read at every start."""
        try:
            vector = decode_vector(record.vector)
        except ValueError as exc:  # binascii.Error is a ValueError
            return None, f"vector is not base64 float32: {exc}"
        if vector.shape != (self.dim,):
            return None, (
                f"vector has {vector.size} dimensions, encoder.dim is {self.dim}; re-encode "
                "the catalogue with the configured encoder (or fix encoder.dim)"
            )
        return vector, ""

    def _store(self, upserts: list[tuple[ItemVector, np.ndarray]], deletes: list[str]) -> None:
        self.streams.forget_items(deletes)
        ids = [record.item_id for record, _ in upserts]
        # Each vector its own array (decode_vector copies): no row keeps a batch alive.
        vectors = [vector for _, vector in upserts]
        self.streams.remember_items(ids, vectors, [record.payload for record, _ in upserts])
        changed = deletes + ids
        if changed and self.on_change is not None:
            self.on_change(changed)

    async def _reject(self, msg: Any, reason: str, error: str) -> None:
        """Dead-letter a record the encoder role should never have written."""
        message = SimpleNamespace(key=msg.key(), value=msg.value())
        origin = (str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0))
        await self.streams.dead_letter(message, reason, error, origin=origin)


def register_item_vector_follower(
    streams: GenreStreams, on_change: Callable[[list[str]], None] | None = None
) -> ItemVectorFollower:
    """Run an ``ItemVectorFollower`` as a task of the app; returns it."""
    follower = ItemVectorFollower(streams, on_change)

    @streams.app.task
    async def follow_item_vectors() -> None:
        await follower.run()

    return follower
