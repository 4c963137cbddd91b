"""GENRE's Faust transport (aiokafka): a short fetch wait and a race-free fetch.

Registered under the ``faust.transports`` entry point as ``genre-kafka``; the
broker URL selects it. Two changes to Faust's aiokafka consumer thread:

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

#: Fetch wait per app id, set by ``build_streams`` from ``kafka.fetch_max_wait_ms``.
FETCH_MAX_WAIT_MS: dict[str, int] = {}
SCHEME = "genre-kafka"


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
    """Faust's aiokafka consumer using ``ShortFetchConsumerThread``."""

    def _new_consumer_thread(self) -> ShortFetchConsumerThread:
        return ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with short fetch waits (``genre-kafka://host:port``)."""

    Consumer = ShortFetchConsumer
