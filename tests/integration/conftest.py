"""A real GENRE worker process on the session broker, with its own topics and local Qdrant."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from genre.core.broker import ensure_genre_topics, free_port
from genre.core.config import GenreConfig, load_config
from genre.core.kafka_client import ClickProducer
from genre.process import WorkerProcess
from genre.schemas import ClickEvent, ItemUpsert, Recommendation

GENRES = {
    "space": [
        "Star Wars: a space opera of rebels and an empire among the stars",
        "Star Trek: a starship crew explores deep space",
        "Alien: a deadly creature stalks a spaceship crew",
        "Apollo 13: astronauts stranded in space fight to return to Earth",
        "Interstellar: explorers travel through a wormhole to save humanity",
        "Gravity: an astronaut adrift in orbit after a space disaster",
    ],
    "animation": [
        "Toy Story: toys come alive when their owner is away",
        "Finding Nemo: a clownfish father crosses the ocean for his son",
        "The Lion King: a lion cub grows up to reclaim his kingdom",
        "Shrek: an ogre and a donkey rescue a princess in a fairy tale",
        "Aladdin: a street boy finds a magic lamp with a genie",
        "Up: an old man flies his house away with balloons",
    ],
    "cooking": [
        "Chef's Table: portraits of great chefs and their restaurants",
        "The Great British Bake Off: amateur bakers compete with cakes",
        "Julie & Julia: a cook works through a French cookbook recipe by recipe",
        "Ratatouille: a rat becomes a chef in a Paris kitchen",
        "Salt Fat Acid Heat: the elements of good cooking",
        "Jiro Dreams of Sushi: a master sushi chef in Tokyo",
    ],
    "crime": [
        "The Godfather: a mafia family's patriarch hands power to his son",
        "Heat: a detective hunts a professional bank robber in Los Angeles",
        "Se7en: two detectives track a serial killer",
        "The Departed: an undercover cop and a mole in the police",
        "Goodfellas: the life of a gangster in the mob",
        "Zodiac: journalists and police chase an elusive killer",
    ],
}


def catalog() -> list[ItemUpsert]:
    """24 items in 4 clearly separated genres; ids are '<genre>-<n>'."""
    return [
        ItemUpsert(
            item_id=f"{genre}-{i}",
            title=text.split(":")[0],
            text=text,
            category=genre,
            tags=[genre],
            ts=1_700_000_000.0,
        )
        for genre, texts in GENRES.items()
        for i, text in enumerate(texts)
    ]


def click(event_id: str, user: str, item: str, ts: float = 1_700_000_100.0) -> ClickEvent:
    """A ClickEvent with defaults suited to the tests."""
    return ClickEvent(event_id=event_id, user_id=user, item_id=item, ts=ts)


def read_topic(
    config: GenreConfig,
    topic: str,
    *,
    until: Callable[[list[Any]], bool] | None = None,
    idle_s: float = 3.0,
    timeout_s: float = 60.0,
) -> list[Any]:
    """All messages of ``topic`` from the start (partitions assigned, no group).

    Stops when ``until(messages)`` is true, after ``idle_s`` without a message
    (only when no ``until`` is given), or at ``timeout_s``.
    """
    consumer = Consumer(
        {
            **config.kafka.consumer_config(),
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                messages.append(msg)
                last = time.monotonic()
                if until is not None and until(messages):
                    return messages
            elif until is None and time.monotonic() - last > idle_s:
                return messages
    finally:
        consumer.close()
    if until is not None:
        raise AssertionError(
            f"condition not met on {topic} within {timeout_s}s ({len(messages)} messages)"
        )
    return messages


@dataclass
class Pipeline:
    """One worker process with its config, plus helpers to drive and observe it."""

    config: GenreConfig
    config_path: Path
    worker: WorkerProcess

    @property
    def topics(self) -> Any:
        return self.config.kafka.topics

    def producer(self) -> ClickProducer:
        return ClickProducer(self.config.kafka)

    def send_clicks(self, events: list[ClickEvent]) -> None:
        with self.producer() as producer:
            for event in events:
                producer.send_raw(self.topics.clicks.name, event.to_bytes(), event.user_id.encode())

    def wait_graph(self, timeout_s: float = 30.0) -> None:
        """Wait until the graph agent applied every co-click record the fold has sent
        (it gathers evidence for ``GRAPH_GATHER_S`` before it writes the edges)."""
        topic = self.topics.co_clicks.name
        sent = self.worker.metric("genre_events_out_total", topic=topic)
        assert sent > 0, "the fold sent no co-click evidence yet"
        self.worker.wait_metric("genre_events_in_total", sent, timeout_s, topic=topic)

    def send_raw(self, payloads: list[bytes]) -> None:
        with self.producer() as producer:
            for payload in payloads:
                producer.send_raw(self.topics.clicks.name, payload, b"raw")

    def recommendations(
        self, until_triggers: set[str], timeout_s: float = 60.0
    ) -> list[Recommendation]:
        """Read recommendations until each event id in ``until_triggers`` triggered one."""

        def done(msgs: list[Any]) -> bool:
            seen = {Recommendation.from_bytes(m.value()).trigger_event_id for m in msgs}
            return until_triggers <= seen

        msgs = read_topic(
            self.config, self.topics.recommendations.name, until=done, timeout_s=timeout_s
        )
        return [Recommendation.from_bytes(m.value()) for m in msgs]

    def user_state(self, user_id: str) -> dict[str, Any] | None:
        """The latest value of ``user_id`` in the user-state table's changelog topic."""
        return self.user_states([user_id])[user_id]

    def user_states(self, user_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """``user_state`` of each of ``user_ids``, from one read of the changelog (each
        read waits ``idle_s`` for stragglers: one per user added seconds per user)."""
        topic = f"{self.config.app_id}-user-state-changelog"
        latest: dict[str, dict[str, Any] | None] = dict.fromkeys(user_ids)
        for msg in read_topic(self.config, topic, idle_s=2.0):
            user = (msg.key() or b"").decode(errors="replace")
            if user in latest:
                latest[user] = orjson.loads(msg.value())
        return latest


def write_config(tmp: Path, bootstrap: str, encoder_dir: Path, **overrides: Any) -> Path:
    """A genre.yaml with unique app id and topics on the shared broker."""
    run = uuid.uuid4().hex[:8]
    data = GenreConfig().model_dump(mode="json")
    data["app_id"] = f"genre-test-{run}"
    data["data_dir"] = str(tmp / "data")
    data["kafka"]["bootstrap_servers"] = bootstrap
    data["kafka"]["connect_timeout_s"] = 5.0
    for spec in data["kafka"]["topics"].values():
        spec["name"] = f"t{run}.{spec['name']}"
        spec["partitions"] = min(spec["partitions"], 2)
    data["streams"]["web_port"] = free_port()
    data["encoder"]["dir"] = str(encoder_dir)
    for section, values in overrides.items():
        data[section].update(values)
    path = tmp / "genre.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_pipeline(
    tmp: Path,
    bootstrap: str,
    encoder_dir: Path,
    *,
    create_topics: Callable[[GenreConfig], None] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Pipeline:
    """Create topics, start a worker, load the test catalog and wait until it is encoded.

    ``create_topics(config)`` replaces ``ensure_genre_topics`` (for a broker without
    CreateTopics); ``env`` is extra environment for the worker process.
    """
    path = write_config(tmp, bootstrap, encoder_dir, **overrides)
    config = load_config(path, environ={})
    if create_topics is None:
        ensure_genre_topics(bootstrap, config.kafka.topics)
    else:
        create_topics(config)
    worker = WorkerProcess(path, config.streams.web_port, tmp / "worker.log", env=env).start(120)
    pipeline = Pipeline(config, path, worker)
    items = catalog()
    try:
        with pipeline.producer() as producer:
            for item in items:
                producer.send_item(item)
        worker.wait_metric("genre_items_encoded_total", len(items), timeout_s=120)
    except BaseException:
        worker.stop()  # a failed start must not leave its worker running
        raise
    return pipeline


@contextmanager
def running_pipeline(
    tmp: Path, bootstrap: str, encoder_dir: Path, **overrides: Any
) -> Iterator[Pipeline]:
    """``start_pipeline``; on exit the worker is stopped and its log tail printed
    (pytest shows it when the test failed)."""
    p = start_pipeline(tmp, bootstrap, encoder_dir, **overrides)
    try:
        yield p
    finally:
        p.worker.stop()
        print(f"--- worker log tail ({p.worker.log_path}) ---\n{p.worker.log_tail(60)}")


@pytest.fixture(scope="module")
def pipeline(
    broker: Any, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """A worker shared by a test module (tests use distinct user ids)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    with running_pipeline(tmp, broker.bootstrap, encoder_dir) as p:
        yield p


@pytest.fixture
def fresh_pipeline(broker: Any, encoder_dir: Path, tmp_path: Path) -> Iterator[Pipeline]:
    """A worker of the test's own (for restarts and kills)."""
    with running_pipeline(tmp_path, broker.bootstrap, encoder_dir) as p:
        yield p
