"""streams/fold.py: a micro-batch of clicks -> user states, graph evidence, users to score
(pure: a dict for the user-state table, no Faust)."""

from __future__ import annotations

import numpy as np
import pytest

from genre.core.features import CoClickEvidence, FeatureSpec, UserState
from genre.schemas import ClickEvent
from genre.streams.fold import Click, Fold

T0 = 1_700_000_000.0
SPEC = FeatureSpec(history_size=4, max_seen=10, dedup_window=8, co_click_window=2)
VECTORS = {
    "a": np.array([1.0, 0.0], np.float32),
    "b": np.array([0.0, 1.0], np.float32),
    "c": np.array([0.6, 0.8], np.float32),
}


def _click(
    user: str, item: str, n: int, *, event_id: str | None = None, offset: int | None = None
) -> Click:
    event = ClickEvent(
        event_id=event_id or f"e{n}", user_id=user, item_id=item, ts=T0 + n, type="click"
    )
    return Click(event, T0 + n + 0.25, "genre.clicks", 1, n if offset is None else offset, None)


def test_a_batch_folds_in_order_and_scores_each_user_once_at_their_latest_click() -> None:
    users: dict[str, UserState] = {}
    clicks = [
        _click("u1", "a", 0),
        _click("u2", "b", 1),
        _click("u1", "b", 2),
        _click("u1", "c", 3),
    ]
    out = Fold(SPEC)(clicks, users, VECTORS, taken_at=T0 + 10, folded_at=T0 + 11)
    assert (out.applied, out.duplicates, out.unknown_items) == (4, 0, [])
    assert set(out.states) == {"u1", "u2"}
    u1 = out.states["u1"]
    assert u1.history == ["a", "b", "c"] and u1.clicks == 3 and u1.last_ts == T0 + 3
    assert u1.vector is not None and u1.vector_ts == T0 + 3
    # One context per user, in the order users first appear; each at its latest click.
    assert [c.user_id for c in out.contexts] == ["u1", "u2"]
    ctx = out.contexts[0]
    assert ctx.trigger_event_id == "e3" and ctx.trigger_ts == T0 + 3
    assert ctx.trigger_produced_at == T0 + 3.25
    assert ctx.history == ("a", "b", "c") and ctx.clicks == 3
    assert list(ctx.clicked_items) == ["a", "b", "c"]  # every click of the batch counts for hits
    assert "a" in ctx.seen and "z" not in ctx.seen
    np.testing.assert_array_equal(ctx.vector, u1.vector)
    assert (ctx.taken_at, ctx.folded_at, ctx.received_at) == (T0 + 10, T0 + 11, T0 + 11)
    # Graph evidence in click order: each click's item, then its neighbours back to it.
    assert out.evidence == [
        CoClickEvidence("a", (), 1.0, T0),
        CoClickEvidence("b", (), 1.0, T0 + 1),
        CoClickEvidence("b", ("a",), 1.0, T0 + 2),
        CoClickEvidence("a", ("b",), 0.0, T0 + 2),
        CoClickEvidence("c", ("b", "a"), 1.0, T0 + 3),
        CoClickEvidence("b", ("c",), 0.0, T0 + 3),
        CoClickEvidence("a", ("c",), 0.0, T0 + 3),
    ]
    assert out.profiles_due == []


def test_the_fold_continues_from_the_stored_state() -> None:
    fold = Fold(SPEC)
    users: dict[str, UserState] = {}
    first = fold([_click("u1", "a", 0)], users, VECTORS)
    users.update(first.states)  # the agent writes each state back once
    second = fold([_click("u1", "b", 1)], users, VECTORS)
    assert second.states["u1"].history == ["a", "b"] and second.states["u1"].clicks == 2
    assert second.evidence[0] == CoClickEvidence("b", ("a",), 1.0, T0 + 1)


def test_a_re_sent_click_is_not_applied_again_but_its_user_is_still_scored() -> None:
    """A click replayed after a crash (its offset not committed, its state written): the
    user's list may not have been published, so the user is scored again; nothing else."""
    fold = Fold(SPEC)
    users: dict[str, UserState] = {}
    users.update(fold([_click("u1", "a", 0), _click("u1", "b", 1)], users, VECTORS).states)
    before = users["u1"].to_bytes()
    replay = fold([_click("u1", "b", 1, offset=99)], users, VECTORS, folded_at=T0 + 5)
    assert (replay.applied, replay.duplicates) == (0, 1)
    assert replay.states == {} and replay.evidence == []  # nothing to write or to send
    assert users["u1"].to_bytes() == before  # clicks, history, vector unchanged
    (ctx,) = replay.contexts
    assert ctx.user_id == "u1" and ctx.trigger_event_id == "e1"
    assert ctx.history == ("a", "b") and ctx.clicks == 2
    assert list(ctx.clicked_items) == []  # no new click: no online hit to count


def test_a_duplicate_within_one_batch_is_applied_once() -> None:
    clicks = [_click("u1", "a", 0), _click("u1", "a", 0), _click("u1", "b", 1)]
    out = Fold(SPEC)(clicks, {}, VECTORS)
    assert (out.applied, out.duplicates) == (2, 1)
    assert out.states["u1"].clicks == 2
    assert [e.item_id for e in out.evidence if e.clicks] == ["a", "b"]
    (ctx,) = out.contexts
    assert ctx.trigger_event_id == "e1"
    # a duplicate after the last applied click still makes it the trigger
    out = Fold(SPEC)([_click("u2", "a", 0), _click("u2", "a", 0)], {}, VECTORS)
    assert out.contexts[0].trigger_event_id == "e0" and out.duplicates == 1


def test_clicks_on_unknown_items_are_refused_while_the_catalogue_is_known() -> None:
    clicks = [_click("u1", "a", 0), _click("u1", "nope", 1), _click("u2", "nope", 2)]
    out = Fold(SPEC)(clicks, {}, VECTORS)
    assert [c.event.item_id for c in out.unknown_items] == ["nope", "nope"]
    assert [c.offset for c in out.unknown_items] == [1, 2]  # for the dead letter's origin
    assert out.applied == 1 and out.states["u1"].history == ["a"]
    assert "u2" not in out.states
    assert [c.user_id for c in out.contexts] == ["u1"]  # u2 has nothing new to score
    assert out.contexts[0].trigger_event_id == "e0"
    assert all("nope" not in (e.item_id, *e.neighbours) for e in out.evidence)
    # The refused click was not remembered: sent again once the item exists, it applies.
    again = Fold(SPEC)([_click("u2", "nope", 2)], {}, {**VECTORS, "nope": VECTORS["a"]})
    assert again.applied == 1


def test_without_the_vector_store_unknown_items_apply_without_a_vector() -> None:
    out = Fold(SPEC)([_click("u1", "a", 0), _click("u1", "x", 1)], {}, VECTORS, strict_items=False)
    assert out.unknown_items == [] and out.applied == 2
    state = out.states["u1"]
    assert state.history == ["a", "x"]
    assert state.vector_ts == T0  # only the known item moved the vector
    assert out.evidence[1] == CoClickEvidence("x", ("a",), 1.0, T0 + 1)


def test_a_profile_is_requested_every_k_clicks_once_per_batch() -> None:
    fold = Fold(SPEC, profile_every=2, profile_titles=3)
    users: dict[str, UserState] = {}
    out = fold([_click("u1", "a", 0)], users, VECTORS)
    assert out.profiles_due == []
    users.update(out.states)
    clicks = [_click("u1", i, n) for n, i in enumerate("bcab", start=1)]
    clicks.append(_click("u2", "a", 9))
    out = fold(clicks, users, VECTORS)
    # u1 (5 clicks now) was due at its 2nd and 4th: one request, the latest, made from
    # its last 3 items then (the 4th click moved "a" to the end of its history)
    (req,) = out.profiles_due
    assert req.user_id == "u1" and req.clicks == 4 and req.trigger_ts == T0 + 3
    assert req.recent_items == ["b", "c", "a"]
    assert out.states["u1"].profiled_clicks == 4
    users.update(out.states)
    out = fold([_click("u1", "c", 10)], users, VECTORS)  # its 6th: due again
    assert [(r.user_id, r.clicks, r.recent_items) for r in out.profiles_due] == [
        ("u1", 6, ["a", "b", "c"])
    ]
    off = Fold(SPEC, profile_every=0)([_click("u1", "a", 11)], users, VECTORS)
    assert off.profiles_due == []  # profiles off
    assert (
        Fold(SPEC)([_click("u3", i, n) for n, i in enumerate("abc")], {}, VECTORS).profiles_due
        == []
    )


def test_an_empty_batch_folds_to_nothing() -> None:
    out = Fold(SPEC)([], {}, VECTORS)
    assert (out.states, out.contexts, out.evidence, out.applied) == ({}, [], [], 0)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_batching_does_not_change_the_states(batch: int) -> None:
    """The fold is per-click: however the stream cuts batches, users end in one state."""
    clicks = [_click(f"u{n % 3}", "abc"[n * 7 % 3], n, event_id=f"e{n % 11}") for n in range(20)]
    whole: dict[str, UserState] = {}
    whole.update(Fold(SPEC)(clicks, whole, VECTORS).states)
    cut: dict[str, UserState] = {}
    fold = Fold(SPEC)
    evidence = []
    for start in range(0, len(clicks), batch):
        out = fold(clicks[start : start + batch], cut, VECTORS)
        cut.update(out.states)
        evidence.extend(out.evidence)
    assert {u: s.to_bytes() for u, s in cut.items()} == {u: s.to_bytes() for u, s in whole.items()}
    assert evidence == Fold(SPEC)(clicks, {}, VECTORS).evidence
