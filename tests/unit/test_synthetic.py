"""The synthetic workload (core/synthetic.py) and `genre produce --synthetic --out-dir`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tracemalloc
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from genre.core.config import GenreConfig
from genre.core.synthetic import THEMES, ClickChunk, SyntheticSpec, SyntheticWorkload
from genre.schemas import ClickEvent, ItemUpsert, Rejection, parse_record

SPEC = SyntheticSpec(seed=7, n_users=5000, n_items=1200, n_topics=12, events=120_000)


@cache
def world(spec: SyntheticSpec = SPEC) -> SyntheticWorkload:
    return SyntheticWorkload(spec)


@cache
def stream(spec: SyntheticSpec = SPEC) -> ClickChunk:
    """All clicks of ``spec`` as one chunk of arrays."""
    chunks = list(world(spec).click_chunks())
    cat = {f: np.concatenate([getattr(c, f) for c in chunks]) for f in ("ts", "user", "item")}
    cat["topic"] = np.concatenate([c.topic for c in chunks])
    cat["session"] = np.concatenate([c.session for c in chunks])
    return ClickChunk(0, **cat)


def payload_bytes(spec: SyntheticSpec) -> bytes:
    w = SyntheticWorkload(spec)
    items = b"".join(v + b"\n" for _, v in w.item_payloads())
    clicks = b"".join(
        b"".join(k + b"\t" + v + b"\n" for k, v in zip(*kv, strict=True))
        for kv in w.click_payloads()
    )
    return items + b"--\n" + clicks


# -- determinism ---------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seed_differs() -> None:
    spec = dataclasses.replace(SPEC, events=20_000)
    first = payload_bytes(spec)
    assert first == payload_bytes(spec)
    assert first != payload_bytes(dataclasses.replace(spec, seed=8))
    assert json.dumps(SyntheticWorkload(spec).truth()) == json.dumps(spec.truth())


def test_event_count_only_truncates() -> None:
    short = [v for _, vs in world().click_payloads(5_000) for v in vs]
    long = [v for _, vs in world().click_payloads(50_000) for v in vs]
    assert len(short) == 5_000 and len(long) == 50_000
    assert long[:5_000] == short


# -- the stream's invariants -----------------------------------------------------


def test_counts_ids_and_timestamps() -> None:
    s = stream()
    assert len(s) == SPEC.events
    assert np.all(np.diff(s.ts) >= 0), "event time goes backwards"
    assert s.ts[0] >= SPEC.start_ts
    # about `rate` clicks per second of event time (a few sessions find no free user)
    rate = len(s) / (s.ts[-1] - s.ts[0])
    assert 0.85 * SPEC.rate < rate < 1.1 * SPEC.rate
    ids = [json.loads(v)["event_id"] for _, vs in world().click_payloads() for v in vs]
    assert len(set(ids)) == len(ids) == SPEC.events
    assert s.item.min() >= 0 and s.item.max() < SPEC.n_items
    assert s.user.min() >= 0 and s.user.max() < SPEC.n_users


def test_every_clicked_item_exists_and_records_validate() -> None:
    spec = dataclasses.replace(SPEC, events=5_000)
    w = SyntheticWorkload(spec)
    items = {}
    for key, value in w.item_payloads():
        item = parse_record(ItemUpsert, value)
        assert not isinstance(item, Rejection), item
        assert item.item_id.encode() == key and item.to_bytes() == value
        items[item.item_id] = item
    assert len(items) == spec.n_items
    n = 0
    for keys, values in w.click_payloads():
        for key, value in zip(keys, values, strict=True):
            event = parse_record(ClickEvent, value)
            assert not isinstance(event, Rejection), event
            assert event.to_bytes() == value  # the same bytes ClickProducer.send would send
            assert key == event.user_id.encode()
            assert event.item_id in items
            n += 1
    assert n == spec.events
    assert [e.event_id for e in w.clicks(3)] == [spec.event_id(i) for i in range(3)]


def test_sessions_keep_a_user_idle_for_the_gap() -> None:
    s, w = stream(), world()
    gap = w.effective["session_gap_s"]
    assert w.effective["scale"] == 1.0 and gap == SPEC.session_gap_s
    sessions, first = np.unique(s.session, return_index=True)
    last = len(s.session) - 1 - np.unique(s.session[::-1], return_index=True)[1]
    user = s.user[first]
    assert np.all(s.user[last] == user), "a session changed user"
    order = np.lexsort((s.ts[first], user))
    same_user = user[order][1:] == user[order][:-1]
    idle = s.ts[first][order][1:] - s.ts[last][order][:-1]
    assert np.all(idle[same_user] >= gap - 0.002)  # ms rounding
    lengths = np.bincount(np.searchsorted(sessions, s.session))
    assert 5 < lengths.mean() < 10  # session_len 8, capped at 32, last sessions truncated


def test_small_populations_scale_the_session_timing_down() -> None:
    spec = SyntheticSpec(seed=1, n_users=50, n_items=200, n_topics=5, events=20_000)
    w = SyntheticWorkload(spec)
    assert w.effective["scale"] < 0.1
    assert w.effective["session_gap_s"] < spec.session_gap_s
    s = stream(spec)
    assert len(s) == spec.events and np.all(np.diff(s.ts) >= 0)
    assert len(s) / (s.ts[-1] - s.ts[0]) > 0.8 * spec.rate


# -- the known structure ---------------------------------------------------------


def _on_user_topics(w: SyntheticWorkload, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    topics = w.user_topics[user]  # (n, k)
    return (topics == w.item_primary[item][:, None]).any(axis=1) | (
        topics == w.item_second[item][:, None]
    ).any(axis=1)


def test_clicks_concentrate_on_the_users_topics() -> None:
    s, w = stream(), world()
    on = _on_user_topics(w, s.user, s.item).mean()
    # a random item is on a user's 3 topics of 12 with probability ~0.25-0.3
    chance = _on_user_topics(w, s.user, np.random.default_rng(0).integers(0, SPEC.n_items, len(s)))
    assert on > 0.9
    assert on > 3 * chance.mean()
    # noise clicks go to a random topic, session clicks to one of the user's topics
    noise = ~(w.user_topics[s.user] == s.topic[:, None]).any(axis=1)
    assert 0.02 < noise.mean() < 0.06  # noise 0.05, minus noise that hits the user's topics
    # the clicked item belongs to the topic it was drawn from
    assert np.all((w.item_primary[s.item] == s.topic) | (w.item_second[s.item] == s.topic))


def test_session_topics_follow_the_interest_mixture() -> None:
    s, w = stream(), world()
    _, first = np.unique(s.session, return_index=True)
    user = s.user[first]
    # the session topic is the first click's topic unless that click was noise; take the
    # most common topic among the session's clicks instead
    pairs, n = np.unique(s.session * SPEC.n_topics + s.topic, return_counts=True)
    by_count = np.lexsort((-n, pairs // SPEC.n_topics))  # per session, most common first
    firsts = np.unique(pairs[by_count] // SPEC.n_topics, return_index=True)[1]
    topic = (pairs[by_count] % SPEC.n_topics)[firsts]
    main = topic == w.user_topics[user, 0]
    expected = w.user_weights[user, 0].mean()
    assert abs(main.mean() - expected) < 0.04
    assert np.allclose(w.user_weights.sum(axis=1), 1.0)
    assert np.all(np.diff(w.user_weights, axis=1) <= 0), "main interest first"


def test_item_popularity_is_zipf_within_topics() -> None:
    s, w = stream(), world()
    counts = np.bincount(s.item, minlength=SPEC.n_items)
    top = np.sort(counts)[::-1]
    assert top[: SPEC.n_items // 10].sum() / counts.sum() > 0.5  # 10% of items, >half the clicks
    single = w.item_second < 0
    by_rank = np.array(
        [counts[single & (w.item_rank == r)].mean() for r in (0, 1, 9)]
    )  # average over topics
    assert by_rank[0] > by_rank[1] > by_rank[2]
    assert 6 < by_rank[0] / by_rank[2] < 25  # 10 ** 1.1 = 12.6


def test_item_text_comes_from_the_items_topics() -> None:
    w = world()
    assert len({word for words in THEMES.values() for word in words}) == 24 * len(THEMES)
    for i, item in enumerate(w.items()):
        topics = w.item_topics(i)
        vocab = {x for t in topics for x in w.topic_words[t]}
        assert item.category == w.topic_names[topics[0]]
        assert set(item.tags) <= vocab and item.tags
        assert {x.lower() for x in item.title.split()} <= set(w.topic_words[topics[0]])
        if i > 200:
            break


def test_more_topics_than_themes_get_pseudo_words() -> None:
    spec = SyntheticSpec(seed=2, n_users=100, n_items=60, n_topics=30, events=100)
    w = SyntheticWorkload(spec)
    extra = [set(words) for words in w.topic_words[len(THEMES) :]]
    assert len(extra) == 6 and all(len(x) == 24 for x in extra)
    assert not set.union(*extra) & {x for ws in THEMES.values() for x in ws}
    assert len(set.union(*extra)) == 6 * 24


def test_truth_matches_the_world() -> None:
    spec = dataclasses.replace(SPEC, events=10)
    w = SyntheticWorkload(spec)
    truth = json.loads(json.dumps(w.truth()))
    assert len(truth["items"]) == spec.n_items and len(truth["users"]) == spec.n_users
    assert [t["name"] for t in truth["topics"]] == list(THEMES)[: spec.n_topics]
    assert truth["items"][spec.item_id(5)]["topics"] == w.item_topics(5)
    user = truth["users"][spec.user_id(9)]
    assert user["topics"] == w.user_topics[9].tolist()
    assert abs(sum(user["weights"]) - 1) < 1e-5
    assert truth["spec"]["seed"] == spec.seed


def test_memory_does_not_grow_with_events() -> None:
    def peak(events: int) -> int:
        w = SyntheticWorkload(dataclasses.replace(SPEC, events=events))
        tracemalloc.start()
        try:
            for _ in w.click_payloads():
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(30_000), peak(300_000)
    assert large < 1.5 * small + 2_000_000
    assert large < 40_000_000


@pytest.mark.parametrize(
    "change",
    [{"n_items": 5}, {"rate": 0.0}, {"noise": 1.5}, {"id_prefix": "a b"}, {"session_len": 0.5}],
)
def test_invalid_specs_are_refused(change: dict) -> None:
    with pytest.raises(ValueError, match="invalid synthetic spec"):
        SyntheticWorkload(dataclasses.replace(SPEC, **change))


# -- the command line ------------------------------------------------------------


def genre(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genre", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_writes_items_clicks_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    args = ["--users", "400", "--items", "300", "--topics", "6", "--events", "20000"]
    res = genre(
        "produce", "--synthetic", *args, "--seed", "3", "--rate", "50", "--out-dir", str(out)
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["items_written"] == 300 and summary["events_written"] == 20_000
    assert summary["events_per_s"] > 0 and summary["seconds"] > 0
    clicks = (out / "clicks.jsonl").read_bytes().splitlines()
    items = (out / "items.jsonl").read_bytes().splitlines()
    assert len(clicks) == 20_000 and len(items) == 300
    truth = json.loads((out / "truth.json").read_text())
    assert len(truth["users"]) == 400 and truth["spec"]["rate"] == 50.0
    # the same spec in this process gives the same bytes
    spec = SyntheticSpec(seed=3, n_users=400, n_items=300, n_topics=6, events=20_000, rate=50.0)
    assert clicks[:1000] == [
        v for _, vs in SyntheticWorkload(spec).click_payloads(1000) for v in vs
    ]
    # what `genre evaluate --clicks ... --items ...` reads
    from genre.model_export.pipeline import load_click_log

    log = load_click_log(GenreConfig(), None, out / "clicks.jsonl", out / "items.jsonl")
    assert len(log.clicks) == 20_000 and len(log.items) == 300


def test_cli_refuses_neither_or_both_sources(tmp_path: Path) -> None:
    res = genre("produce")
    assert res.returncode == 2 and "--synthetic" in res.stderr
    res = genre("produce", str(tmp_path / "x.jsonl"), "--synthetic")
    assert res.returncode == 2 and "not both" in res.stderr
    res = genre("produce", str(tmp_path / "x.jsonl"), "--events", "5")
    assert res.returncode == 2 and "only apply with --synthetic" in res.stderr
    res = genre("produce", "--synthetic", "--items", "3", "--topics", "5", "--out-dir", "x")
    assert res.returncode == 2 and "n_items" in res.stderr
