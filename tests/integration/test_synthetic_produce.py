"""`genre produce --synthetic` against the session broker: items first, then keyed clicks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genre.core.broker import ensure_genre_topics
from genre.core.config import load_config
from genre.core.synthetic import SyntheticSpec, SyntheticWorkload
from genre.schemas import ClickEvent, ItemUpsert

from .conftest import read_topic, write_config

pytestmark = pytest.mark.broker


def test_synthetic_produce_sends_items_then_clicks(broker: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, broker.bootstrap, tmp_path / "no-encoder")
    config = load_config(path, environ={})
    ensure_genre_topics(broker.bootstrap, config.kafka.topics)
    spec = SyntheticSpec(seed=5, n_users=200, n_items=120, n_topics=6, events=3000)
    args = ["--users", "200", "--items", "120", "--topics", "6", "--events", "3000", "--seed", "5"]
    truth = tmp_path / "truth.json"
    args += ["--truth", str(truth), "--config", str(path)]
    res = subprocess.run(
        [sys.executable, "-m", "genre", "produce", "--synthetic", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["items_sent"] == 120 and summary["events_sent"] == 3000
    assert summary["events_per_s"] > 0
    assert len(json.loads(truth.read_text())["items"]) == 120

    topics = config.kafka.topics
    items = read_topic(config, topics.items.name, until=lambda m: len(m) >= 120)
    assert {ItemUpsert.from_bytes(m.value()).item_id for m in items} == {
        spec.item_id(i) for i in range(120)
    }
    clicks = read_topic(config, topics.clicks.name, until=lambda m: len(m) >= 3000)
    assert len(clicks) == 3000
    events = [ClickEvent.from_bytes(m.value()) for m in clicks]
    assert all(m.key() == e.user_id.encode() for m, e in zip(clicks, events, strict=True))
    assert len({e.event_id for e in events}) == 3000
    # what was sent is the generator's stream, whatever the partitioning
    expected = {v for _, vs in SyntheticWorkload(spec).click_payloads() for v in vs}
    assert {m.value() for m in clicks} == expected
    # every click was produced after every item (items are flushed first)
    last_item = max(m.timestamp()[1] for m in items)
    assert min(m.timestamp()[1] for m in clicks) >= last_item
