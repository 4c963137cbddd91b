"""Split roles: the stream, encoder and scorer as three processes, as compose runs them.

Each process is a real ``genre worker --role ...`` on the session broker, with its
own consumer group and its own local Qdrant folder. Item vectors reach the stream
and scorer roles only through the compacted item-vectors topic, user state reaches
the scorer only inside score requests; every process's /metrics is scraped while
clicks flow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from genre.core.broker import ensure_genre_topics, free_port
from genre.core.config import GenreConfig, load_config
from genre.core.kafka_client import ClickProducer
from genre.process import WorkerProcess
from genre.schemas import ItemUpsert, Recommendation

from .conftest import catalog, click, read_topic, write_config

ROLE_NAMES = ("encoder", "stream", "scorer")


@dataclass
class SplitPipeline:
    """One process per role on shared topics."""

    config: GenreConfig
    workers: dict[str, WorkerProcess]

    def send(self, events: list[Any]) -> None:
        with ClickProducer(self.config.kafka) as producer:
            for event in events:
                if isinstance(event, ItemUpsert):
                    producer.send_item(event)
                else:
                    producer.send_raw(
                        self.config.kafka.topics.clicks.name,
                        event.to_bytes(),
                        event.user_id.encode(),
                    )

    def recommendations(self, until_triggers: set[str]) -> list[Recommendation]:
        def done(msgs: list[Any]) -> bool:
            seen = {Recommendation.from_bytes(m.value()).trigger_event_id for m in msgs}
            return until_triggers <= seen

        topic = self.config.kafka.topics.recommendations.name
        return [
            Recommendation.from_bytes(m.value())
            for m in read_topic(self.config, topic, until=done, timeout_s=90)
        ]


@pytest.fixture(scope="module")
def split(
    broker: Any, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SplitPipeline]:
    tmp = tmp_path_factory.mktemp("roles")
    path = write_config(tmp, broker.bootstrap, encoder_dir)
    config = load_config(path, environ={})
    ensure_genre_topics(broker.bootstrap, config.kafka.topics)
    workers: dict[str, WorkerProcess] = {}
    for role in ROLE_NAMES:
        port = free_port()
        env = {"GENRE_STREAMS__WEB_PORT": str(port), "GENRE_DATA_DIR": str(tmp / role)}
        workers[role] = WorkerProcess(path, port, tmp / f"{role}.log", env=env, role=role)
    try:
        for worker in workers.values():
            worker.spawn()
        for worker in workers.values():
            worker.wait_ready(120)
        pipeline = SplitPipeline(config, workers)
        items = catalog()
        pipeline.send(items)
        workers["encoder"].wait_metric("genre_items_encoded_total", len(items), timeout_s=120)
        vectors_topic = config.kafka.topics.item_vectors.name
        for role in ("stream", "scorer"):
            workers[role].wait_metric(
                "genre_events_in_total", len(items), timeout_s=60, topic=vectors_topic
            )
        yield pipeline
    finally:
        for role, worker in workers.items():
            worker.stop()
            print(f"--- {role} log tail ---\n{worker.log_tail(40)}")


def test_each_role_is_its_own_consumer_group(split: SplitPipeline) -> None:
    t = split.config.kafka.topics
    split.send([click("roles-g1", "roles-g", "space-0")])
    split.recommendations({"roles-g1"})
    consumed = {
        role: {
            topic
            for topic in (t.clicks.name, t.items.name, t.user_clicks.name, t.score_requests.name)
            if w.metric("genre_events_in_total", topic=topic) > 0
        }
        for role, w in split.workers.items()
    }
    # Clicks keyed by their user are folded where they land: user-clicks stays unread.
    assert consumed == {
        "encoder": {t.items.name},
        "stream": {t.clicks.name},
        "scorer": {t.score_requests.name},
    }
    stream = split.workers["stream"]
    assert stream.metric("genre_clicks_routed_total", route="in_place") >= 1
    assert stream.metric("genre_clicks_routed_total", route="rekeyed") == 0


def test_split_roles_recommend_with_state_carried_in_requests(split: SplitPipeline) -> None:
    history = ["space-0", "space-1", "space-2"]
    split.send([click(f"roles-a{i}", "roles-a", item) for i, item in enumerate(history)])
    recs = [r for r in split.recommendations({"roles-a2"}) if r.user_id == "roles-a"]
    latest = recs[-1]
    ids = [i.item_id for i in latest.items]
    assert ids, latest
    # The seen filter works only if the history reached the scorer in the request.
    assert not set(ids) & set(history)
    # The user vector reached it too: the nearest items are the rest of the genre.
    assert ids[0].startswith("space-"), ids
    assert all(i.title for i in latest.items)  # payloads came through the topic
    # Where its latency went: the hand-off is a topic between two processes here.
    assert latest.hops is not None
    assert set(latest.hops) == {"ingest", "fold", "handoff", "wait", "score"}
    assert latest.hops["handoff"] > 0
    assert sum(latest.hops.values()) <= latest.latency_ms + 1.0
    scorer = split.workers["scorer"]
    assert scorer.metric("genre_fallbacks_total", stage="scorer") == 0
    assert scorer.metric("genre_recommendations_total") >= 1
    assert scorer.metric("genre_click_to_recommendation_ms_count") >= 1
    assert scorer.metric("genre_candidates_total", source="ann") > 0
    assert scorer.metric("genre_hop_ms_count", hop="handoff") >= 1
    stream = split.workers["stream"]
    assert stream.metric("genre_online_clicks_total") >= len(history)
    assert stream.metric("genre_recommendations_total") == 0
    # The stream role hands users over as score requests, never to a scorer of its own.
    assert stream.metric("genre_pending_users") == 0
    assert (
        stream.metric("genre_events_out_total", topic=split.config.kafka.topics.score_requests.name)
        >= 1
    )
    encoder = split.workers["encoder"]
    assert encoder.metric("genre_inference_seconds_count", model="text_encoder") >= 1


def test_scorer_counts_online_hits_from_the_clicked_items(split: SplitPipeline) -> None:
    scorer = split.workers["scorer"]
    split.send([click("roles-h0", "roles-h", "crime-0")])
    first = [r for r in split.recommendations({"roles-h0"}) if r.user_id == "roles-h"][-1]
    hits = scorer.metric("genre_online_hits_total")
    split.send([click("roles-h1", "roles-h", first.items[0].item_id, ts=1_700_000_200.0)])
    split.recommendations({"roles-h1"})
    assert scorer.metric("genre_online_hits_total") == hits + 1


def test_deleted_item_leaves_every_role(split: SplitPipeline) -> None:
    gone = "cooking-5"
    split.send([ItemUpsert(item_id=gone, deleted=True, ts=1_700_000_300.0)])
    for role in ("stream", "scorer"):
        split.workers[role].wait_metric(
            "genre_events_in_total",
            len(catalog()) + 1,
            timeout_s=60,
            topic=split.config.kafka.topics.item_vectors.name,
        )
    # The stream role no longer knows it: a click on it is dead-lettered.
    stream = split.workers["stream"]
    unknown = stream.metric("genre_dlq_records_total", reason="unknown_item")
    split.send([click("roles-d0", "roles-d", gone)])
    stream.wait_metric("genre_dlq_records_total", unknown + 1, timeout_s=60, reason="unknown_item")
    # The scorer no longer proposes it to a user deep in that genre.
    events = [click(f"roles-d{i}", "roles-d", f"cooking-{i}") for i in range(1, 5)]
    split.send(events)
    latest = [r for r in split.recommendations({"roles-d4"}) if r.user_id == "roles-d"][-1]
    assert gone not in [i.item_id for i in latest.items]
    assert any(i.item_id == "cooking-0" for i in latest.items)


def test_a_bad_item_vector_is_dead_lettered_and_the_followers_keep_going(
    split: SplitPipeline,
) -> None:
    import numpy as np

    from genre.core.features import encode_vector
    from genre.schemas import ItemVector

    topic = split.config.kafka.topics.item_vectors.name
    short = ItemVector(item_id="bad-dim", vector=encode_vector(np.ones(3, np.float32)))
    mismatch = ItemVector(item_id="other", vector=encode_vector(np.ones(384, np.float32)))
    followers = ("stream", "scorer")
    before = {
        r: split.workers[r].metric("genre_dlq_records_total", reason="invalid_value")
        for r in followers
    }
    with ClickProducer(split.config.kafka) as producer:
        producer.send_raw(topic, short.to_bytes(), b"bad-dim")
        producer.send_raw(topic, mismatch.to_bytes(), b"not-other")
    for role in followers:
        split.workers[role].wait_metric(
            "genre_dlq_records_total", before[role] + 2, timeout_s=60, reason="invalid_value"
        )
    split.send([click("roles-b0", "roles-b", "animation-0")])
    latest = [r for r in split.recommendations({"roles-b0"}) if r.user_id == "roles-b"][-1]
    assert latest.items and "bad-dim" not in [i.item_id for i in latest.items]
    assert all(w.running for w in split.workers.values())
