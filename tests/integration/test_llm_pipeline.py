"""LLM enrichment and profiles on the stream: real broker, real worker, real HTTP endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from genre.core.features import decode_vector
from genre.llm.backends import OfflineBackend
from genre.llm.client import item_label

from ..llm_server import LLMTestServer
from .conftest import GENRES, Pipeline, catalog, click, read_topic, running_pipeline

pytestmark = pytest.mark.broker

N_ITEMS = sum(len(v) for v in GENRES.values())


def table(pipeline: Pipeline, name: str) -> dict[str, Any]:
    """Latest value per key of a table, read from its changelog topic."""
    out: dict[str, Any] = {}
    topic = f"{pipeline.config.app_id}-{name}-changelog"
    for msg in read_topic(pipeline.config, topic, idle_s=2.0):
        if msg.key() is not None:  # tables are keyed by the raw UTF-8 id
            out[msg.key().decode()] = orjson.loads(msg.value())
    return out


def wait_for_profile(pipeline: Pipeline, user: str, clicks: int) -> dict[str, Any]:
    """The user's profile once one written at ``clicks`` clicks or later is in the changelog."""
    topic = f"{pipeline.config.app_id}-user-profiles-changelog"

    key = user.encode()  # tables are keyed by the raw UTF-8 id

    def written(msgs: list[Any]) -> bool:
        return any(m.key() == key and orjson.loads(m.value())["clicks"] >= clicks for m in msgs)

    msgs = read_topic(pipeline.config, topic, until=written, timeout_s=60)
    return [orjson.loads(m.value()) for m in msgs if m.key() == key][-1]


def endpoint_llm(server: LLMTestServer, **settings: Any) -> dict[str, Any]:
    """The ``llm`` section for the local test endpoint: 1 s calls, no cache, + ``settings``."""
    base = {"backend": "openai", "base_url": server.base_url, "model": "test-model"}
    return {**base, "timeout_s": 1.0, "cache_path": None, **settings}


@pytest.fixture
def profile_pipeline(broker: Any, encoder_dir: Path, tmp_path: Path) -> Iterator[Pipeline]:
    """Offline LLM backend; the profile source dominates the blend so its picks show."""
    with running_pipeline(
        tmp_path,
        broker.bootstrap,
        encoder_dir,
        scorer={
            "candidates": [
                {"name": "profile", "weight": 1.0, "limit": 50, "params": {}},
                {"name": "trending", "weight": 0.01, "limit": 10, "params": {}},
            ]
        },
        llm={"profiles": {"enabled": True, "every_k_clicks": 3, "debounce_s": 0.1}},
    ) as p:
        yield p


def test_profiles_are_generated_encoded_and_drive_candidates(profile_pipeline: Pipeline) -> None:
    p = profile_pipeline
    items = {i.item_id: i for i in catalog()}
    assert p.worker.metric("genre_items_enriched_total", source="offline") == N_ITEMS
    user = "prof-space"
    p.send_clicks(
        [click(f"{user}-{i}", user, f"space-{i}", ts=1_700_000_100.0 + i) for i in range(3)]
    )

    profile = wait_for_profile(p, user, clicks=3)
    labels = [item_label(items[f"space-{i}"].title, "space", ["space"]) for i in range(3)]
    expected = OfflineBackend().profile(labels)
    assert profile["interests"] == expected.interests
    assert profile["profile"] == expected.profile
    assert profile["source"] == "offline" and profile["backend"] == "offline"
    vector = decode_vector(profile["vector"])
    assert vector.shape == (p.config.encoder.dim,)
    assert abs(float((vector**2).sum()) - 1.0) < 1e-4  # a unit text vector
    assert p.worker.metric("genre_profiles_generated_total", source="offline") >= 1

    # The next click is scored with the profile: the profile source finds the rest
    # of the genre and its reasons name the interest the item matches.
    p.send_clicks([click(f"{user}-3", user, "space-3", ts=1_700_000_200.0)])
    rec = next(r for r in p.recommendations({f"{user}-3"}) if r.trigger_event_id == f"{user}-3")
    from_profile = [i for i in rec.items if i.source == "profile"]
    assert from_profile, rec.items
    assert {"space-4", "space-5"} <= {i.item_id for i in from_profile}
    space_reasons = {i.reason for i in from_profile if i.item_id.startswith("space")}
    # The offline lexicon reads "space" as sci-fi, and so does the items' enrichment.
    assert expected.interests[0] == "sci-fi"
    assert space_reasons == {"matches your interest in sci-fi"}, space_reasons

    # Users below every_k_clicks have no profile and still get lists (from trending,
    # once the graph has the clicks above).
    p.wait_graph()
    p.send_clicks([click("prof-new-0", "prof-new", "crime-0", ts=1_700_000_300.0)])
    rec = next(r for r in p.recommendations({"prof-new-0"}) if r.user_id == "prof-new")
    assert rec.items and all(i.source != "profile" for i in rec.items)
    assert "prof-new" not in table(p, "user-profiles")


@pytest.mark.parametrize("mode", ["slow", "error", "malformed"])
def test_llm_outage_never_stalls_or_drops_clicks(
    broker: Any, encoder_dir: Path, tmp_path: Path, mode: str
) -> None:
    """A hung, failing or garbage-speaking endpoint: items are encoded from raw text at
    once, every click gets its list, profiles fall back; when the endpoint heals, the
    failed items are enriched and re-encoded without any new input."""
    with (
        LLMTestServer(mode, slow_s=30.0) as server,
        running_pipeline(
            tmp_path,
            broker.bootstrap,
            encoder_dir,
            llm=endpoint_llm(
                server,
                retries=0,
                rate_per_s=0,
                breaker_failures=3,
                breaker_reset_s=1.0,
                items={"enabled": True, "wait_s": 0.2, "retry_s": 1.0},
                profiles={"enabled": True, "every_k_clicks": 2, "debounce_s": 0.1},
            ),
        ) as p,
    ):
        w = p.worker
        w.wait_metric("genre_items_enriched_total", N_ITEMS, timeout_s=60, source="failed")
        users = [f"out-{mode}-{g}" for g in GENRES]
        events = [
            click(f"{u}-{i}", u, f"{g}-{i}", ts=1_700_000_100.0 + i)
            for u, g in zip(users, GENRES, strict=True)
            for i in range(4)
        ]
        p.send_clicks(events)
        triggers = {e.event_id for e in events if e.event_id.endswith("-3")}
        recs = p.recommendations(triggers, timeout_s=60)
        assert {r.user_id for r in recs} == set(users)
        assert all(r.items for r in recs if r.trigger_event_id in triggers)
        w.wait_metric("genre_profiles_generated_total", len(users), timeout_s=30, source="failed")
        assert w.metric("genre_llm_fallbacks_total") > 0
        assert w.metric("genre_dlq_records_total") == 0

        server.reset("ok")
        w.wait_metric("genre_items_enriched_total", N_ITEMS, timeout_s=60, source="llm")
        assert _eventually(lambda: w.metric("genre_enrichment_pending") == 0)


def _eventually(check: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_a_catalogue_load_is_paced_by_the_rate_limit_not_failed(
    broker: Any, encoder_dir: Path, tmp_path: Path
) -> None:
    """24 items at 5 requests/s with a 1 s call timeout: fired at once, most calls would
    time out waiting for the limiter; queued behind max_concurrency, every one succeeds."""
    with (
        LLMTestServer("ok") as server,
        running_pipeline(
            tmp_path,
            broker.bootstrap,
            encoder_dir,
            llm=endpoint_llm(
                server,
                max_concurrency=2,
                rate_per_s=5.0,
                items={"enabled": True, "wait_s": 0.2},
                profiles={"enabled": False},
            ),
        ) as p,
    ):
        w = p.worker
        w.wait_metric("genre_items_enriched_total", N_ITEMS, timeout_s=60, source="llm")
        assert w.metric("genre_llm_fallbacks_total") == 0
        assert w.metric("genre_items_enriched_total", source="failed") == 0
        assert server.max_inflight <= 2
        assert _eventually(lambda: w.metric("genre_enrichment_pending") == 0)
