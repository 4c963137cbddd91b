"""GENRE's Faust transport (aiokafka): a short fetch wait and a race-free fetch.

Registered under the ``faust.transports`` entry point as ``genre-kafka``; the
broker URL selects it. Three changes to Faust's aiokafka consumer:

* **Fetch wait.** Faust creates its aiokafka consumer with
  ``fetch_max_wait_ms=1500``. A broker that answers a waiting fetch only when
  the wait expires, not when data arrives (the embedded broker, tansu 0.6, does
  this), then adds up to 1.5 s per topic hop: ~2.5 s from click to
  recommendation over GENRE's three hops. A short wait bounds that at
  ``kafka.fetch_max_wait_ms`` per hop.
* **No records fetched for paused partitions** (pinned faust-streaming 0.15.3).
  Faust hands its *live* set of active partitions to aiokafka's
  ``fetched_records``, which runs on the consumer thread and waits there for
  data. When table recovery pauses the last active partitions while that call
  waits ("Done reading from changelog topics"), the set becomes empty, and
  aiokafka reads an empty set as "every assigned partition": it hands back the
  records it had prefetched for the paused source topics and moves their fetch
  positions past them. Faust drops those records (their partitions are not
  active), and the seek to committed offsets at the end of recovery cannot
  bring them back for a partition that has no committed offset yet (aiokafka
  skips those). After a worker was killed before its first commit, the clicks
  produced while it was down were never consumed. Here each fetch gets a
  snapshot of the active partitions; records of a partition paused while the
  fetch waited are un-read (the partition is seeked back to them); and the
  end-of-rebalance seek puts stream partitions without a committed offset at
  the ``consumer_auto_offset_reset`` position instead of leaving them wherever
  the last fetch stopped. See docs/reliability.md.
* **Record chunks** (a documented extension of Faust's model, for throughput).
  For the topics named in ``CHUNKED_TOPICS`` every partition's share of one
  fetch reaches Faust as one ``RecordChunk`` message instead of one message
  per record. Faust's per-message path (a task pair in the fetch loop, channel
  queue, stream bookkeeping, sensors) costs ~100 us per record on this
  machine, which caps a plain agent near 10k records/s (``bench_stream.py``);
  per chunk it is paid once per few hundred records. A chunk is acknowledged as the whole range of
  offsets it stands for (plus any gap before it), so commits still only move
  past records an agent has finished, and Faust still flushes the producer
  before it commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.transport.consumer import ack_lock
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.utils.futures import notify

#: Fetch wait per app id, set by ``build_streams`` from ``kafka.fetch_max_wait_ms``.
FETCH_MAX_WAIT_MS: dict[str, int] = {}
SCHEME = "genre-kafka"
#: Topics delivered as record chunks, per app id (set by ``build_streams``).
CHUNKED_TOPICS: dict[str, frozenset[str]] = {}


class RecordChunk(ConsumerMessage):
    """Consecutive records of one partition, delivered to an agent as one Faust message.

    ``offset`` is the last record's offset (so Faust's read position is right);
    ``first_offset`` is where the acknowledged range starts: the first record,
    or the end of the previous chunk when offsets were skipped in between
    (compaction, transaction markers). ``records`` are aiokafka ConsumerRecords.
    """

    __slots__ = ("first_offset", "records")

    def __init__(self, tp: TP, records: list[Any], first_offset: int, generation_id: Any) -> None:
        last = records[-1]
        super().__init__(
            tp.topic,
            tp.partition,
            last.offset,
            (last.timestamp or 0) / 1000.0,
            last.timestamp_type,
            None,
            None,
            b"",
            None,
            0,
            sum(r.serialized_value_size for r in records),
            tp,
            generation_id=generation_id,
        )
        self.first_offset = first_offset
        self.records = records


class _Chunk:
    """A fetched partition's records, standing in for one record in Faust's fetch loop."""

    __slots__ = ("first_offset", "offset", "records")

    def __init__(self, records: list[Any], first_offset: int) -> None:
        self.records = records
        self.first_offset = first_offset
        self.offset = records[-1].offset


class ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the configured fetch wait and race-free fetches."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = FETCH_MAX_WAIT_MS.get(self.app.conf.id)
        if wait is not None:
            # aiokafka reads this attribute when it builds its fetcher at start();
            # Faust offers no setting for it (pinned faust-streaming 0.15.3).
            consumer._fetch_max_wait_ms = wait
        return consumer

    async def getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        """Fetch for a snapshot of the active partitions, never for "all" by accident.

        Runs on the app's event loop, the one that pauses and resumes
        partitions, so the copy is consistent. An empty snapshot fetches
        nothing (to aiokafka an empty set would mean every partition).
        """
        if active_partitions is not None:
            active_partitions = set(active_partitions)
            if not active_partitions:
                return {}
        return await super().getmany(active_partitions, timeout)

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        records: dict[TP, list[Any]] = dict(
            await super()._fetch_records(
                consumer, active_partitions, timeout=timeout, max_records=max_records
            )
        )
        if active_partitions is None or not records:
            return records
        # Partitions paused while the fetch waited: Faust would drop their records
        # after aiokafka moved past them. Un-read them instead.
        faust_consumer = self.consumer
        live = faust_consumer._active_partitions or set()
        buffered = faust_consumer._buffered_partitions
        for tp in [tp for tp in records if tp not in live and tp not in buffered]:
            batch = records.pop(tp)
            try:
                consumer.seek(tp, batch[0].offset)
            except IllegalStateError:  # revoked meanwhile: the next owner reads them
                continue
            self.log.debug(
                "Un-read %d records of paused %s (seek back to %d)",
                len(batch),
                tp,
                batch[0].offset,
            )
        return records

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to committed offsets; reset stream partitions that have none.

        aiokafka leaves a partition without a committed offset at whatever
        position the last fetch reached, so records fetched but dropped during
        a rebalance would be skipped for good. Such a partition starts over at
        the ``consumer_auto_offset_reset`` position, as on a fresh assignment.
        Table changelogs are left alone: recovery positions them itself.
        """
        return await self.call_thread(self._seek_to_committed_or_reset)

    async def _seek_to_committed_or_reset(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        uncommitted = [
            tp for tp, offset in committed.items() if offset is None and tp.topic not in changelogs
        ]
        if uncommitted:
            reset = self.app.conf.consumer_auto_offset_reset
            self.log.debug("No committed offset; seeking to %s: %s", reset, uncommitted)
            if reset == "earliest":
                await consumer.seek_to_beginning(*uncommitted)
            elif reset == "latest":
                await consumer.seek_to_end(*uncommitted)
        return committed


class ShortFetchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer: ``ShortFetchConsumerThread`` plus record chunks."""

    def _new_consumer_thread(self) -> ShortFetchConsumerThread:
        return ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _chunked(self) -> frozenset[str]:
        return CHUNKED_TOPICS.get(self.app.conf.id, frozenset())

    async def _wait_next_records(self, timeout: float) -> Any:
        records, active = await super()._wait_next_records(timeout)
        chunked = self._chunked()
        if not records or not chunked:
            return records, active
        out: dict[TP, list[Any]] = {}
        for tp, batch in records.items():
            if tp.topic not in chunked or not batch:
                out[tp] = batch
                continue
            # The fetch loop reads offsets in order, so the last read offset is the
            # end of the previous chunk: acknowledge any gap after it with this one.
            read = self._read_offset.get(tp)
            first = batch[0].offset
            if read is not None and read < first:
                first = read + 1
            out[tp] = [_Chunk(batch, first)]
        return out, active

    def _to_message(self, tp: TP, record: Any) -> Any:
        if isinstance(record, _Chunk):
            return RecordChunk(
                tp, record.records, record.first_offset, self.app.consumer_generation_id
            )
        return super()._to_message(tp, record)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # A chunk acknowledges its own offsets and the gap before it (see ack).
        if tp.topic not in self._chunked():
            await super()._add_gap(tp, offset_from, offset_to)

    def ack(self, message: Any) -> bool:
        """Acknowledge a message; a chunk acknowledges every offset it stands for."""
        if not isinstance(message, RecordChunk):
            return super().ack(message)
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            try:
                tp = message.tp
                if not self.app.topics.acks_enabled_for(message.topic):
                    return False
                committed = self._committed_offset[tp]
                start = message.first_offset
                if committed is not None:
                    start = max(start, committed)
                acked_index = self._acked_index[tp]
                fresh = [o for o in range(start, message.offset + 1) if o not in acked_index]
                if not fresh:
                    return False
                self._unacked_messages.discard(message)
                acked_index.update(fresh)
                self._acked[tp].extend(fresh)
                self._n_acked += len(fresh)
                return True
            finally:
                notify(self._waiting_for_ack)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with short fetch waits (``genre-kafka://host:port``)."""

    Consumer = ShortFetchConsumer

    async def _really_create_topic(
        self, owner: Any, client: Any, topic: str, *args: Any, **kwargs: Any
    ) -> None:
        # Faust sends CreateTopics for every topic it declares, existing or not. A
        # broker that does not offer CreateTopics (librdkafka's mock cluster) or a
        # Kafka cluster whose ACLs forbid it then stops the worker at start, even
        # though every topic is there. Only topics missing from metadata are created.
        if topic in (await client.fetch_all_metadata()).topics():
            owner.log.debug("topic %r exists: not creating it", topic)
            return None
        return await super()._really_create_topic(owner, client, topic, *args, **kwargs)
