"""Table recovery that reads exact changelog end offsets.

Faust stops replaying a changelog partition at the end offset the broker
reports (ListOffsets "latest"). The embedded broker (tansu 0.6) reports the
start of the partition's last record batch + 1 instead of the true end, so a
restarted worker would drop the newest records of every batch. Fetch
responses carry the true high watermark, so we fetch one record at the
reported end - 1 and use the fetch's watermark. Against Apache Kafka this
returns the same value the broker reported. Written by hand because no
library offers a "verified end offset"; plugged in through Faust's
``TableManager`` setting, not by patching Faust.

With RocksDB tables (``streams.store: rocksdb://``) this matters more: each
partition's database stores the offset of the last changelog record it holds,
and a restarted worker reads the changelog only past it. Faust raises
ConsistencyError when that offset is above the end it was told, which the
short end would do whenever a partition's last batch held several records.
Nothing here depends on the store: the persisted offsets are Faust's, only
the highwaters come from this probe. If the probe fails, the broker's end is
used, and a RocksDB worker may then stop with that ConsistencyError rather
than carry on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

#: Settings for the short-lived offset-probing consumer, set per app.
CLIENT_CONFIG: dict[str, dict[str, str]] = {}


def exact_end_offsets(
    client_config: dict[str, str], tps: Iterable[tuple[str, int]], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """True end offset (last offset + 1) of each partition, from fetch watermarks."""
    consumer = Consumer(
        {
            **client_config,
            "group.id": f"genre-offsets-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        result: dict[tuple[str, int], int] = {}
        pending: dict[tuple[str, int], int] = {}
        for topic, partition in tps:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s
                )
            except KafkaException:  # the partition does not exist (yet): nothing to replay
                result[(topic, partition)] = 0
                continue
            if high <= low:
                result[(topic, partition)] = high
            else:
                pending[(topic, partition)] = high
        if pending:
            consumer.assign([TopicPartition(t, p, high - 1) for (t, p), high in pending.items()])
            deadline = time.monotonic() + timeout_s
            while pending and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    continue
                key = (msg.topic(), msg.partition())
                if key in pending:
                    _, true_high = consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
                    result[key] = max(int(true_high), pending.pop(key))
            result.update(pending)  # timed out: fall back to what the broker reported
        return result
    finally:
        consumer.close()


class ExactEndRecovery(Recovery):
    """Faust's recovery with exact end offsets (see the module docstring)."""

    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        config = CLIENT_CONFIG.get(self.app.conf.id)
        if config is None or not tps:
            return await super()._build_highwaters(consumer, tps, destination, title)
        try:
            ends = await asyncio.get_running_loop().run_in_executor(
                None, exact_end_offsets, config, [(tp.topic, tp.partition) for tp in tps]
            )
        except Exception as exc:  # never let the probe take the worker down
            self.log.warning("exact end offsets unavailable (%r); using the broker's", exc)
            return await super()._build_highwaters(consumer, tps, destination, title)
        # Faust tracks the last offset, not the end: hence the -1, as upstream does.
        highwaters = {tp: ends[(tp.topic, tp.partition)] - 1 for tp in tps}
        self.log.info("Exact highwaters for %s changelog partitions: %s", title, highwaters)
        destination.clear()
        destination.update(highwaters)


class ExactEndTableManager(TableManager):
    """A TableManager whose recovery uses exact changelog end offsets."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = ExactEndRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
