"""The pipeline's integration tests against a second Kafka implementation: librdkafka's
mock cluster (``tests/kafka_mock.py``), so that no behaviour rests on tansu's quirks.

The same test bodies as on tansu (``test_pipeline``, ``test_bad_input``, ``test_faults``)
run here on a worker configured as for Apache Kafka (``kafka.flavor: apache``: no
exact end-offset probes; the mock's ListOffsets reports true end offsets).

What differs on the mock, and how these tests deal with it:

* No CreateTopics (nor any admin API): every topic is created through the mock's own
  API before the worker starts (``MockBroker.create_genre_topics``), Faust's internal
  ones included. The product's ``ensure_topics`` cannot create one there (see
  ``test_ensure_topics_names_a_broker_without_create_topics``).
* Faust sends CreateTopics for every topic it declares, existing or not; on the mock
  the worker exited at start until GENRE's transport (``streams/transport.py``) learnt
  to create only the topics metadata does not list
  (``test_worker_starts_without_create_topics``).
* No compaction (topic configs are not kept) and no log retention to speak of: the
  tests never rely on either.
* Consumer groups: a group whose last member left is not reset to Empty, so the next
  member's JoinGroup waits ``session.timeout.ms`` - 1 s (44 s with Apache Kafka's
  45 s) instead of Kafka's 3 s initial delay. Every worker restart here costs that
  (a killed one waits for its session to expire, as on Kafka), so the workers here
  use ``kafka.session_timeout_ms: 6000``.
  A fetch with no data is held for its whole ``fetch.wait.max.ms`` (as on tansu):
  each hop adds up to the apache flavour's 500 ms.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from genre.core.broker import BrokerError, ensure_topics
from genre.core.config import load_config
from genre.core.kafka_client import ClickProducer, ConsumeStats, iter_records
from genre.schemas import ClickEvent
from tests.kafka_mock import MockBroker, mock_broker

from . import test_bad_input as on_tansu_bad_input
from . import test_faults as on_tansu_faults
from . import test_pipeline as on_tansu
from .conftest import Pipeline, click, running_pipeline, write_config

__all__ = ["mock_broker"]  # the session fixture, imported for this module

pytestmark = pytest.mark.broker

#: The worker's settings on the mock: Apache Kafka's (``kafka.flavor: apache``: no
#: exact end-offset probes, Kafka's fetch wait). ``write_config`` writes the flavour it
#: resolved for the default bootstrap, hence the explicit keys. The session timeout is
#: 6 s instead of Kafka's 45 s: the mock makes a member rejoining an emptied group wait
#: the session timeout, which would add ~45 s to every restart test.
APACHE: dict[str, Any] = {
    "kafka": {"flavor": "apache", "fetch_max_wait_ms": None, "session_timeout_ms": 6_000}
}


def on_mock(tmp: Path, broker: MockBroker, encoder_dir: Path) -> Any:
    """``running_pipeline`` on ``broker``, with topics made through the mock's own API."""
    return running_pipeline(
        tmp,
        broker.bootstrap,
        encoder_dir,
        create_topics=broker.create_genre_topics,
        **APACHE,
    )


@pytest.fixture(scope="module")
def mock_pipeline(
    mock_broker: MockBroker, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """A worker on the session's mock cluster, shared by this module's tests."""
    mock_broker.api_keys()  # start counting afresh
    with on_mock(tmp_path_factory.mktemp("mock-pipeline"), mock_broker, encoder_dir) as p:
        yield p
    print(f"--- requests the mock served, by API: {dict(mock_broker.api_keys())}")


# -- the confluent-kafka clients alone ----------------------------------------------------


def test_click_producer_and_group_consumer(mock_broker: MockBroker, tmp_path: Path) -> None:
    """``ClickProducer`` and ``iter_records`` (no Faust): keyed produce, a consumer group
    that reads to the end and commits, and a "latest" reader that sees only new records."""
    path = write_config(tmp_path, mock_broker.bootstrap, tmp_path, **APACHE)
    config = load_config(path, environ={})
    mock_broker.create_genre_topics(config)
    kafka = config.kafka
    topic = kafka.topics.clicks.name
    first = [click(f"cp-{i}", f"cp-u{i % 3}", f"space-{i % 6}") for i in range(10)]
    with ClickProducer(kafka) as producer:
        for event in first:
            assert producer.send(event)
        assert not producer.send(first[0])  # de-duplicated by event id
        producer.send_raw(topic, b"{not json", b"cp-u0")
    group = f"cp-group-{tmp_path.name}"
    stats = ConsumeStats()
    got = list(
        iter_records(
            kafka,
            topic,
            ClickEvent,
            group_id=group,
            from_beginning=True,
            timeout_s=30,
            stop_at_end=True,
            stats=stats,
        )
    )
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in first)
    assert stats.reasons == {"invalid_json": 1}
    # Closing the consumer committed its position: the end of every partition. (Not
    # read back by joining the group again: on the mock a group whose last member
    # left waits session.timeout.ms - 1 s for the next one, 44 s with Kafka's 45 s.)
    probe = Consumer({**kafka.client_config(), "group.id": group})
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        committed = probe.committed(tps, timeout=10)
        ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
    finally:
        probe.close()
    assert [tp.offset for tp in committed] == ends
    assert sum(ends) == len(first) + 1

    # A reader without a group starts at the true end: it sees only newer records.
    newest = click("cp-newest", "cp-u1", "animation-0")
    reader = iter_records(kafka, kafka.topics.clicks.name, ClickEvent, timeout_s=10)

    def produce_soon() -> None:
        time.sleep(2.0)
        with ClickProducer(kafka) as producer:
            producer.send(newest)

    sender = threading.Thread(target=produce_soon)
    sender.start()
    try:
        assert next(reader).event_id == "cp-newest"
    finally:
        sender.join()
        reader.close()


def test_ensure_topics_names_a_broker_without_create_topics(mock_broker: MockBroker) -> None:
    with pytest.raises(BrokerError, match=mock_broker.bootstrap):
        ensure_topics(mock_broker.bootstrap, {"not-creatable": 1}, timeout_s=2.0)


def test_worker_starts_without_create_topics(mock_pipeline: Pipeline) -> None:
    """Faust declares every topic at start; GENRE's transport creates only missing ones,
    so a broker without CreateTopics (or ACLs that forbid it) is no obstacle.

    The module's worker is started just so (``on_mock``: topics made through the mock's
    API only); its clean stop exiting 0 is asserted by the restart test's ``stop``."""
    assert mock_pipeline.worker.running, mock_pipeline.worker.log_tail()
    assert mock_pipeline.worker.metric("genre_items_encoded_total") > 0


# -- the pipeline: the tansu tests' bodies, on the mock -------------------------------------


def test_clicks_produce_schema_valid_recommendations(mock_pipeline: Pipeline) -> None:
    on_tansu.test_clicks_produce_schema_valid_recommendations(mock_pipeline)


def test_co_clicks_drive_recommendations(mock_pipeline: Pipeline) -> None:
    on_tansu.test_co_clicks_drive_recommendations(mock_pipeline)


def test_bad_events_go_to_dlq_with_reasons(mock_pipeline: Pipeline) -> None:
    on_tansu.test_bad_events_go_to_dlq_with_reasons_while_good_ones_flow(mock_pipeline)


def test_bad_input_corpus_is_dead_lettered_once(mock_pipeline: Pipeline) -> None:
    on_tansu_bad_input.test_corpus(mock_pipeline)


def test_resent_events_count_once(mock_pipeline: Pipeline) -> None:
    on_tansu.test_resent_events_count_once(mock_pipeline)


# The tests below stop, kill or freeze under the module's worker: they come last, and
# read nothing the earlier tests left behind (their own user ids, no metric deltas).


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_restarted_worker_recovers_tables_from_changelog(mock_pipeline: Pipeline, how: str) -> None:
    on_tansu.test_restarted_worker_recovers_tables_from_changelog(mock_pipeline, how)


def test_worker_resumes_after_the_broker_freezes(
    mock_broker: MockBroker, mock_pipeline: Pipeline
) -> None:
    try:
        on_tansu_faults.test_worker_resumes_after_the_broker_freezes(mock_broker, mock_pipeline)  # type: ignore[arg-type]
    finally:
        if mock_broker.pid:
            os.kill(mock_broker.pid, signal.SIGCONT)  # never leave the broker stopped
