"""The pull API's one consumer: every partition of three topics, from the beginning, forever.

No consumer group: each API process reads everything (its views are whole copies,
so any number of API replicas answer alike). ``ready`` is set once every
partition was read to its end once; until then ``/ready`` answers 503.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from genre.core.config import GenreConfig
from genre.core.kafka_client import readable_partitions
from genre.core.telemetry import METRICS
from genre.schemas import ItemVector, Recommendation, Rejection, parse_record
from genre.workers.api_views import CoClickGraph, ContentIndex, LatestLists

log = logging.getLogger("genre.api")

#: Most records taken per poll, and the longest wait of one poll (seconds).
POLL_BATCH = 1_000
POLL_WAIT_S = 0.1


class ApiFollower:
    """Fills ``lists``, ``index`` and ``graph`` from their topics on its own thread."""

    def __init__(
        self, config: GenreConfig, lists: LatestLists, index: ContentIndex, graph: CoClickGraph
    ) -> None:
        topics = config.kafka.topics
        self.kafka = config.kafka
        self.lists, self.index, self.graph = lists, index, graph
        self.recommendations = topics.recommendations.name
        self.item_vectors = topics.item_vectors.name
        self.co_clicks = topics.co_clicks.name
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._pending: set[tuple[str, int]] = set()
        self._consumer = self._open()
        self._thread = threading.Thread(target=self._run, name="api-follower", daemon=True)

    def start(self) -> ApiFollower:
        """Start reading on the follower thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading and close the consumer."""
        self._stop.set()
        self._thread.join(5.0)

    def _open(self) -> Consumer:
        consumer = Consumer(
            {
                **self.kafka.consumer_config(),
                "group.id": f"genre-api-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        parts: list[TopicPartition] = []
        fix = (
            f"at {self.kafka.bootstrap_servers}: start a worker first (`genre worker` creates "
            "the topics) or create them, and check kafka.topics in genre.yaml"
        )
        for name in (self.recommendations, self.item_vectors, self.co_clicks):
            found = readable_partitions(consumer, name, self.kafka.connect_timeout_s, fix)
            parts += [TopicPartition(name, p, OFFSET_BEGINNING) for p in found]
        self._pending = {(tp.topic, tp.partition) for tp in parts}
        consumer.assign(parts)
        return consumer

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.apply(self._consumer.consume(POLL_BATCH, POLL_WAIT_S))
        except BaseException as exc:  # the API must say it stopped following, not go stale
            self.error = exc
            log.exception("the API stopped following its topics")
        finally:
            self._consumer.close()

    def apply(self, messages: list[Message]) -> None:
        """Apply polled messages in order, each topic to its view."""
        counts: dict[str, int] = {}
        for msg in messages:
            err = msg.error()
            topic = str(msg.topic())
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._pending.discard((topic, int(msg.partition() or 0)))
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("API consumer error: %s", err.str())
                continue
            counts[topic] = counts.get(topic, 0) + 1
            self._apply_one(topic, msg.key(), msg.value())
        for topic, n in counts.items():
            METRICS.events_in.labels(topic).inc(n)
        if not self._pending and not self.ready.is_set():
            log.info(
                "API caught up: %d users with lists, %d items, %d items in the co-click graph",
                len(self.lists),
                len(self.index),
                len(self.graph),
            )
            self.ready.set()

    def _apply_one(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if topic == self.co_clicks:
            if value:
                self.graph.apply(value)
            return
        if topic == self.item_vectors:
            if value is None:
                if key is not None:
                    self.index.delete(key.decode("utf-8", "replace"))
                return
            vector = parse_record(ItemVector, value)
            problem = vector.error if isinstance(vector, Rejection) else self.index.apply(vector)
        else:
            rec = parse_record(Recommendation, value)
            problem = rec.error if isinstance(rec, Rejection) else None
            if not isinstance(rec, Rejection):
                self.lists.apply(rec)
        if problem:
            log.warning("skipping a record of %s: %s", topic, problem)
