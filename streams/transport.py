"""A Faust transport (aiokafka) whose consumers use a short, configurable fetch wait.

Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500``. A broker
that answers a waiting fetch only when the wait expires, not when data arrives
(the embedded broker, tansu 0.6, does this), then adds up to 1.5 s per topic
hop: ~2.5 s from click to recommendation over GENRE's three hops. A short wait
bounds that at ``kafka.fetch_max_wait_ms`` per hop. Registered under the
``faust.transports`` entry point as ``genre-kafka``; the broker URL selects it.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

#: Fetch wait per app id, set by ``build_streams`` from ``kafka.fetch_max_wait_ms``.
FETCH_MAX_WAIT_MS: dict[str, int] = {}
SCHEME = "genre-kafka"


class ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the configured fetch wait."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = FETCH_MAX_WAIT_MS.get(self.app.conf.id)
        if wait is not None:
            # aiokafka reads this attribute when it builds its fetcher at start();
            # Faust offers no setting for it (pinned faust-streaming 0.15.3).
            consumer._fetch_max_wait_ms = wait
        return consumer


class ShortFetchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer using ``ShortFetchConsumerThread``."""

    def _new_consumer_thread(self) -> ShortFetchConsumerThread:
        return ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with short fetch waits (``genre-kafka://host:port``)."""

    Consumer = ShortFetchConsumer
