"""The LLM step's stream rules: when profiles fall due, what the ranker's profile feature
is, how reasons name interests, and the batch calls offline evaluation makes."""

from __future__ import annotations

import numpy as np
import pytest

from genre.core.config import GenreConfig, LLMConfig
from genre.core.vectorstore import StoredVector
from genre.llm.backends import OpenAIBackend
from genre.llm.client import (
    LLMClient,
    LLMResult,
    UserProfile,
    build_llm,
    item_label,
    profile_text,
)
from genre.model_export.replay import (
    FeatureSpec,
    ProfileTrack,
    ReplayError,
    StreamReplay,
    build_interactions,
    profile_schedule,
)
from genre.schemas import ClickEvent, ItemUpsert
from genre.streams.fold import Click, Fold
from genre.workers.scorer import matching_interest

from ..llm_server import LLMTestServer

T0 = 1_700_000_000.0


def _log(seed: int = 0, n_users: int = 6, n_items: int = 20, clicks: int = 40):
    rng = np.random.default_rng(seed)
    items = [
        ItemUpsert(item_id=f"m{i}", title=f"movie {i}", tags=["drama"]) for i in range(n_items)
    ]
    events = [
        ClickEvent(
            event_id=f"e{k}",
            user_id=f"u{int(rng.integers(n_users))}",
            item_id=f"m{int(rng.integers(n_items))}",
            ts=T0 + 60.0 * k,
        )
        for k in range(clicks * n_users)
    ]
    return items, events


def test_profile_schedule_follows_the_user_state_agent() -> None:
    """Offline training must ask for profiles exactly when the stream's fold does."""
    items, events = _log()
    data = build_interactions(items, events)
    every, recent, history = 5, 3, 8
    fold = Fold(FeatureSpec(history_size=history), profile_every=every, profile_titles=recent)
    users: dict = {}
    expected = []
    ordered = sorted(events, key=lambda ev: ev.ts)
    index = {item: i for i, item in enumerate(data.item_ids)}
    for e, event in enumerate(ordered):  # one click per batch: each request maps to its event
        result = fold([Click(event, event.ts, "clicks", 0, e)], users, {}, strict_items=False)
        users.update(result.states)
        expected += [(e, tuple(index[i] for i in r.recent_items)) for r in result.profiles_due]
    got = profile_schedule(data, every, recent, history)
    assert got == expected
    assert len(got) >= len(data) // every - data.n_users


def test_replay_profile_feature_is_the_clipped_cosine_after_the_profile_lands() -> None:
    items, events = _log(seed=1)
    data = build_interactions(items, events)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(data.n_items, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    due = profile_schedule(data, 5, 10, 50)
    vectors = rng.normal(size=(len(due), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    after = np.full(len(data), -1, np.int32)
    for row, (e, _) in enumerate(due):
        after[e] = row
    spec = FeatureSpec(feature_names=("trending", "co_click", "profile"))
    replay = StreamReplay(data, spec, text, ProfileTrack(after, vectors))
    first_due = {int(data.users[e]): e for e, _ in reversed(due)}
    checked = 0
    for e in replay.run():
        u = int(data.users[e])
        feats = replay.features(u, np.arange(data.n_items), float(data.ts[e]))
        assert feats.shape == (data.n_items, 3)
        if u not in first_due or e <= first_due[u]:
            assert (feats[:, 2] == 0).all()  # no profile yet (it lands after the due click)
        else:
            row = replay.user_profile[u]
            np.testing.assert_allclose(feats[:, 2], np.maximum(text @ vectors[row], 0), atol=1e-6)
            checked += 1
    assert checked > 50
    with pytest.raises(ReplayError, match="ProfileTrack"):
        StreamReplay(data, spec, text)
    with pytest.raises(ReplayError, match="covers"):
        StreamReplay(data, spec, text, ProfileTrack(after[:-1], vectors))


def _stored(**payload: object) -> StoredVector:
    return StoredVector("x", np.zeros(4, np.float32), payload)


def test_reasons_name_the_interest_the_item_matches() -> None:
    item = _stored(title="Alien", category="Horror", tags=["Sci-Fi"], enrichment={"keywords": []})
    assert matching_interest(["comedy", "sci-fi", "horror"], item) == "sci-fi"
    enriched = _stored(title="Heat", enrichment={"keywords": ["heist"], "categories": ["crime"]})
    assert matching_interest(["romance", "crime"], enriched) == "crime"
    # No shared word: no interest is claimed (a wrong reason is worse than a plain one).
    assert matching_interest(["romance"], item) is None
    assert matching_interest(["sci-fi"], None) is None


def test_item_labels_and_profile_texts() -> None:
    assert item_label("Heat", "Crime", ["Crime", "Thriller"]) == "Heat (Crime, Thriller)"
    assert item_label("Heat", "Crime", []) == "Heat (Crime)"
    assert item_label("Heat") == "Heat"
    p = UserProfile(profile="Enjoys crime.", interests=["crime", "heists"])
    assert profile_text(p) == "Enjoys crime. Interests: crime, heists."
    assert profile_text(UserProfile(profile="No clear preferences yet.", interests=[])) == (
        "No clear preferences yet."
    )


def test_result_origin_separates_configured_offline_from_failures() -> None:
    p = UserProfile(profile="x", interests=[])
    assert LLMResult(p, "llm", "openai:m").origin == "llm"
    assert LLMResult(p, "cache", "openai:m").origin == "cache"
    assert LLMResult(p, "fallback", "offline").origin == "offline"
    assert LLMResult(p, "fallback", "offline", "timeout").origin == "failed"


def test_batch_calls_keep_order_and_report_progress() -> None:
    llm = build_llm(GenreConfig())
    items = [
        ItemUpsert(item_id=f"i{k}", title=f"Space movie {k}", tags=["Sci-Fi"]) for k in range(7)
    ]
    ticks: list[int] = []
    results = llm.enrich_items_sync(items, lambda: ticks.append(1))
    assert len(ticks) == 7
    assert [r.value.summary.split(" (")[0] for r in results] == [i.title for i in items]
    profiles = llm.profiles_sync([["Heat (Crime)"], ["Up (Animation)"]])
    assert [p.value.interests[0] for p in profiles] == ["crime", "animation"]
    llm.close()


def test_batch_calls_against_a_failing_endpoint_fall_back_per_item() -> None:
    with LLMTestServer("error") as server:
        cfg = LLMConfig(
            backend="openai", base_url=server.base_url, retries=0, rate_per_s=0, cache_path=None
        )
        llm = LLMClient(cfg, OpenAIBackend(cfg))
        items = [ItemUpsert(item_id=f"i{k}", title=f"Movie {k}") for k in range(6)]
        results = llm.enrich_items_sync(items)
        assert [r.origin for r in results] == ["failed"] * 6
        assert {r.reason for r in results} <= {"http_500", "circuit_open"}
        llm.close()
