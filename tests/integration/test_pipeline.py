"""The walking skeleton end to end: real broker, real worker process, real ONNX, local Qdrant."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from genre.core.features import decode_vector
from genre.core.vectorstore import QdrantStore
from genre.schemas import DeadLetter, Recommendation, UserClicks
from genre.schemas.jsonschema import SCHEMA_DIR

from .conftest import Pipeline, click, read_topic, running_pipeline

pytestmark = pytest.mark.broker

RECOMMENDATION_SCHEMA = json.loads((SCHEMA_DIR / "Recommendation.json").read_text())


def latest_by_user(recs: list[Recommendation]) -> dict[str, Recommendation]:
    out: dict[str, Recommendation] = {}
    for rec in recs:
        out[rec.user_id] = rec
    return out


def test_clicks_produce_schema_valid_recommendations(pipeline: Pipeline) -> None:
    events = []
    for user, genre in (("ann-space", "space"), ("ann-cook", "cooking"), ("ann-crime", "crime")):
        events += [
            click(f"{user}-{i}", user, f"{genre}-{i}", ts=1_700_000_100.0 + i) for i in range(3)
        ]
    pipeline.send_clicks(events)
    last = {f"{u}-2" for u in ("ann-space", "ann-cook", "ann-crime")}
    recs = pipeline.recommendations(until_triggers=last)

    for rec in recs:
        jsonschema.validate(json.loads(rec.to_bytes()), RECOMMENDATION_SCHEMA)
    latest = {r.trigger_event_id: r for r in recs if r.trigger_event_id in last}
    assert set(latest) == last
    for rec in latest.values():
        genre = rec.user_id.split("-")[1]
        genre = {"cook": "cooking"}.get(genre, genre)
        clicked = {f"{genre}-{i}" for i in range(3)}
        ids = [i.item_id for i in rec.items]
        assert len(ids) == pipeline.config.scorer.top_k
        assert not clicked & set(ids), "seen items must be filtered out"
        # Content (ANN) similarity finds the rest of the user's genre on a cold graph.
        assert {f"{genre}-{i}" for i in range(3, 6)} <= set(ids), (genre, ids)
        top_ann = next(i for i in rec.items if i.source == "ann")
        assert top_ann.item_id.startswith(genre), (genre, ids)
        assert all(item.reason for item in rec.items)
        assert any(item.reason.startswith("because you watched ") for item in rec.items)
        assert rec.latency_ms >= 0
        assert rec.model_version.startswith("blend+")
        scores = [item.score for item in rec.items]
        assert scores == sorted(scores, reverse=True)


def test_co_clicks_drive_recommendations(pipeline: Pipeline) -> None:
    # Many users watch space-0 then cooking-5: an odd pair that content alone would
    # never suggest. A new user who watches space-0 should then get cooking-5.
    events = []
    for u in range(6):
        user = f"cc-crowd-{u}"
        events += [
            click(f"{user}-a", user, "space-0", ts=1_700_000_200.0 + u),
            click(f"{user}-b", user, "cooking-5", ts=1_700_000_201.0 + u),
        ]
    pipeline.send_clicks(events)
    pipeline.recommendations(until_triggers={f"cc-crowd-{u}-b" for u in range(6)})
    pipeline.wait_graph()
    pipeline.send_clicks([click("cc-new-a", "cc-new", "space-0", ts=1_700_000_300.0)])
    recs = pipeline.recommendations(until_triggers={"cc-new-a"})
    rec = next(r for r in recs if r.trigger_event_id == "cc-new-a")
    by_id = {i.item_id: i for i in rec.items}
    assert "cooking-5" in by_id, [i.item_id for i in rec.items]
    assert by_id["cooking-5"].source == "co_click"
    assert by_id["cooking-5"].reason == "because you watched Star Wars"


def test_bad_events_go_to_dlq_with_reasons_while_good_ones_flow(pipeline: Pipeline) -> None:
    dlq_before = pipeline.worker.metric("genre_dlq_records_total")
    bad = {
        b"{not json": "invalid_json",
        b"\xff\xfe\x00garbage": "invalid_json",
        b"[1, 2, 3]": "not_an_object",
        b'{"event_id": "x1", "user_id": "u", "ts": 1700000000}': "missing_field",
        b'{"event_id": "x2", "user_id": "u", "item_id": "space-1", "ts": "soon"}': "wrong_type",
        # ts in milliseconds, and an extra field:
        b'{"event_id": "x3", "user_id": "u", "item_id": "space-1", "ts": 17e11}': "invalid_value",
        b'{"event_id": "x4", "user_id": "u", "item_id": "space-1", "ts": 1.7e9, "x": 1}': (
            "unknown_field"
        ),
        b"{" + b'"pad": "' + b"a" * 70_000 + b'"}': "payload_too_large",
        b"": "empty_payload",
    }
    good = [click(f"dlq-good-{i}", "dlq-good", f"crime-{i}") for i in range(3)]
    unknown = click("dlq-unknown", "dlq-good", "no-such-item")
    pipeline.send_raw(list(bad))
    pipeline.send_clicks([*good, unknown])

    recs = pipeline.recommendations(until_triggers={"dlq-good-2"})
    assert any(r.user_id == "dlq-good" for r in recs)

    expected = sorted([*bad.values(), "unknown_item"])
    msgs = read_topic(
        pipeline.config,
        pipeline.topics.dlq.name,
        until=lambda m: len(m) >= len(expected) + dlq_before,
    )
    letters = [DeadLetter.from_bytes(m.value()) for m in msgs]
    mine = [d for d in letters if d.reason in set(expected)][-len(expected) :]
    assert sorted(d.reason for d in mine) == expected
    for letter in mine:
        assert letter.source_topic == pipeline.topics.clicks.name
        assert letter.source_offset >= 0
        assert letter.error
    unknown_letter = next(d for d in mine if d.reason == "unknown_item")
    assert "no-such-item" in unknown_letter.raw_payload
    huge = next(d for d in mine if d.reason == "payload_too_large")
    assert len(huge.raw_payload) < 5000, "dead letters carry a truncated payload"
    # The books balance: every click consumed was folded where it landed, re-keyed, or
    # dead-lettered; these were all keyed by user, so none was re-keyed.
    w = pipeline.worker
    consumed = w.metric("genre_events_in_total", topic=pipeline.topics.clicks.name)
    in_place = w.metric("genre_clicks_routed_total", route="in_place")
    rekeyed = w.metric("genre_clicks_routed_total", route="rekeyed")
    ingest_rejects = sum(w.metric("genre_dlq_records_total", reason=r) for r in set(bad.values()))
    assert consumed == in_place + rekeyed + ingest_rejects
    assert in_place >= len(good) + 1


def test_resent_events_count_once(pipeline: Pipeline) -> None:
    dup_before = pipeline.worker.metric("genre_duplicate_events_total")
    first = [click(f"dup-{i}", "dup-user", f"animation-{i}") for i in range(3)]
    pipeline.send_clicks([*first, first[0], first[1], first[0]])
    pipeline.send_clicks([click("dup-3", "dup-user", "animation-3")])
    pipeline.recommendations(until_triggers={"dup-3"})
    pipeline.worker.wait_metric("genre_duplicate_events_total", dup_before + 3, timeout_s=20)
    state = pipeline.user_state("dup-user")
    assert state is not None
    assert state["clicks"] == 4
    assert state["history"] == [f"animation-{i}" for i in range(4)]
    assert sorted(state["recent_events"]) == [f"dup-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def restart_pipeline(
    broker: Any, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """A worker for the restart tests alone (they restart it: the module's ``pipeline``
    would come back without its counters), shared by their variants."""
    with running_pipeline(tmp_path_factory.mktemp("restart"), broker.bootstrap, encoder_dir) as p:
        yield p


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_restarted_worker_recovers_tables_from_changelog(
    restart_pipeline: Pipeline, how: str
) -> None:
    # Ids of this variant's own: both variants restart one worker, in turn.
    p, user = restart_pipeline, f"rs-{how}"
    before = [click(f"{user}-{i}", user, f"space-{i}", ts=1_700_000_100.0 + i) for i in range(5)]
    p.send_clicks(before)
    p.recommendations(until_triggers={f"{user}-4"})
    if how == "kill":
        p.worker.kill()
        time.sleep(7.0)  # let the killed member's 6 s session expire first
    else:
        assert p.worker.stop() == 0, p.worker.log_tail()
    p.worker.start(ready_timeout_s=120)
    after = [
        click(f"{user}-{i}", user, f"crime-{i - 5}", ts=1_700_000_200.0 + i) for i in range(5, 8)
    ]
    p.send_clicks(after)
    recs = p.recommendations(until_triggers={f"{user}-7"})
    state = p.user_state(user)
    assert state is not None
    # Each accepted event is reflected exactly once, across the restart.
    assert state["clicks"] == 8
    assert state["history"] == [f"space-{i}" for i in range(5)] + [f"crime-{i}" for i in range(3)]
    final = next(r for r in recs if r.trigger_event_id == f"{user}-7")
    assert not {i.item_id for i in final.items} & set(state["history"])


def test_user_vector_and_list_are_stored_in_qdrant(
    broker: Any, encoder_dir: Path, tmp_path: Path
) -> None:
    # Local mode writes no users unless asked (scorer.users_write_s; see README).
    with running_pipeline(
        tmp_path, broker.bootstrap, encoder_dir, scorer={"users_write_s": 0.5}
    ) as p:
        _check_users_in_qdrant(p)


def _check_users_in_qdrant(p: Pipeline) -> None:
    p.send_clicks([click(f"qd-{i}", "qd-user", f"cooking-{i}") for i in range(3)])
    recs = p.recommendations(until_triggers={"qd-2"})
    final = next(r for r in recs if r.trigger_event_id == "qd-2")
    p.worker.stop()  # local mode: release the folder lock before reading it
    store = QdrantStore(path=str(p.config.path(p.config.qdrant.path)))
    try:
        stored = store.retrieve(p.config.qdrant.users_collection, ["qd-user"])["qd-user"]
    finally:
        store.close()
    assert stored.payload["items"] == [i.item_id for i in final.items]
    assert stored.vector.shape == (p.config.encoder.dim,)
    assert abs(float((stored.vector**2).sum()) - 1.0) < 1e-3


def test_metrics_page_exports_every_stage(pipeline: Pipeline) -> None:
    """Every stage's metrics carry samples from this traffic, not just HELP lines."""
    from .conftest import catalog

    w = pipeline.worker
    clicks = pipeline.topics.clicks.name
    before = w.metric("genre_events_in_total", topic=clicks)
    lists_before = w.metric("genre_click_to_recommendation_ms_count")
    pipeline.send_clicks(
        [click("met-e1", "met-u1", "crime-0"), click("met-e2", "met-u1", "crime-1")]
    )
    pipeline.recommendations(until_triggers={"met-e2"})
    w.wait_metric("genre_click_to_recommendation_ms_count", lists_before + 1, timeout_s=20)

    assert w.metric("genre_events_in_total", topic=clicks) >= before + 2
    assert w.metric("genre_events_out_total", topic=pipeline.topics.recommendations.name) >= 1
    assert w.metric("genre_items_encoded_total") >= len(catalog())
    for histogram in (
        "genre_agent_batch_seconds",
        "genre_inference_seconds",
        "genre_qdrant_seconds",
        "genre_hop_ms",
    ):
        count = w.metric(f"{histogram}_count")
        assert count > 0, f"{histogram}: no observations"
        assert w.metric(f"{histogram}_sum") > 0, f"{histogram}: observations sum to 0"
    assert w.metric("genre_candidates_total") > 0
    assert w.metric("genre_model_info") >= 1  # an info gauge: 1 per loaded model


def test_memory_page_counts_tables_and_caches(pipeline: Pipeline) -> None:
    import urllib.error
    import urllib.request

    from .conftest import catalog

    pipeline.send_clicks([click("mem-e1", "mem-u1", "space-0")])
    pipeline.recommendations(until_triggers={"mem-e1"})
    report = pipeline.worker.memory_report()
    assert report["rss_mb"] > 50
    entries = report["entries"]
    assert entries["users"] >= 1
    assert entries["item_catalog_cache"] >= len(catalog())
    assert entries["exact_index"] >= len(catalog())
    # Started without PYTHONTRACEMALLOC: no sites, and the page says how to get them.
    assert report["allocations"]["tracing"] is False
    assert "PYTHONTRACEMALLOC=1" in report["allocations"]["hint"]
    url = f"http://127.0.0.1:{pipeline.worker.web_port}/debug/memory?top=many"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 400
    assert "whole number" in json.loads(err.value.read())["error"]


def test_worker_names_the_unreachable_broker(encoder_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from genre.core.broker import free_port

    from .conftest import write_config

    path = write_config(tmp_path, f"127.0.0.1:{free_port()}", encoder_dir)
    out = subprocess.run(
        [sys.executable, "-m", "genre", "worker", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    message = " ".join((out.stderr + out.stdout).split())
    assert "kafka.bootstrap_servers" in message
    assert "genre broker" in message


def test_state_changelog_is_json(pipeline: Pipeline) -> None:
    pipeline.send_clicks([click("js-0", "js-user", "space-3")])
    pipeline.recommendations(until_triggers={"js-0"})
    state = pipeline.user_state("js-user")
    assert state is not None
    assert orjson.loads(orjson.dumps(state)) == state
    assert len(decode_vector(state["vector"])) == pipeline.config.encoder.dim


def test_clicks_keyed_by_user_are_folded_where_they_land(pipeline: Pipeline) -> None:
    """A click keyed by its user id (murmur2, as ClickProducer sends it) is in the partition
    of the user's state and is folded there; one keyed otherwise is re-keyed once."""
    users = [f"cp-user-{i}" for i in range(12)]
    pipeline.send_clicks([click(f"cp-{u}", u, "animation-4") for u in users])
    misplaced = click("cp-other-key", "cp-user-x", "animation-4")
    with pipeline.producer() as producer:
        producer.send_raw(pipeline.topics.clicks.name, misplaced.to_bytes(), b"not-the-user")
    pipeline.recommendations(until_triggers={f"cp-{u}" for u in users} | {"cp-other-key"})

    def partitions(topic: str, users_in: Callable[[Any], list[str]]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for msg in read_topic(pipeline.config, topic, idle_s=2.0):
            for user in users_in(msg):
                out.setdefault(user, set()).add(msg.partition())
        return out

    def click_user(m: Any) -> list[str]:  # other tests left invalid records on the topic
        try:
            return [orjson.loads(m.value())["user_id"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return []

    clicks = partitions(pipeline.topics.clicks.name, click_user)
    rekeyed = partitions(
        pipeline.topics.user_clicks.name,
        lambda m: [c.event.user_id for c in UserClicks.from_bytes(m.value()).clicks],
    )
    state = partitions(
        f"{pipeline.config.app_id}-user-state-changelog", lambda m: [m.key().decode()]
    )
    assert set(users) <= set(state)
    for user in users:
        assert len(clicks[user]) == 1
        assert clicks[user] == state[user], user
    assert len({p for u in users for p in clicks[u]}) > 1  # really spread out
    # Only the click keyed otherwise took the extra hop, to its user's state partition.
    assert set(rekeyed) == {"cp-user-x"}
    assert rekeyed["cp-user-x"] == state["cp-user-x"]
    # In one process no score request crosses a topic.
    assert not list(read_topic(pipeline.config, pipeline.topics.score_requests.name, idle_s=1.0))
