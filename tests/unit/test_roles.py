"""Worker roles: app ids, tables, per-role Qdrant folders, score requests that carry state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genre.core.config import GenreConfig
from genre.core.features import UserState, decode_vector
from genre.core.vectorstore import QdrantStore
from genre.schemas import ScoreRequest, ScoreRequests
from genre.streams.app import (
    ITEM_STATE_CODEC,
    ROLES,
    USER_STATE_CODEC,
    build_streams,
    role_app_id,
)
from genre.streams.score_context import context_of, from_request, to_request
from genre.workers.scorer import hops
from genre.workers.service import role_config


def test_each_split_role_is_its_own_consumer_group() -> None:
    ids = {role: role_app_id("genre", role) for role in ROLES}
    assert ids == {
        "all": "genre",
        "stream": "genre",  # the user-state changelog stays the one `all` wrote
        "encoder": "genre-encoder",
        "scorer": "genre-scorer",
    }
    with pytest.raises(ValueError, match="all, stream, encoder, scorer"):
        role_app_id("genre", "ranker")


ROLE_TABLES = {
    "all": {"users", "graph", "latest_lists", "profiles"},
    "stream": {"users"},
    "encoder": set(),
    "scorer": {"graph", "latest_lists", "profiles"},
}


@pytest.mark.parametrize("role", ROLES)
def test_a_role_declares_only_its_tables(role: str, tmp_path: Path) -> None:
    config = GenreConfig(data_dir=str(tmp_path))
    store = QdrantStore(path=str(tmp_path / "qdrant"))
    streams = build_streams(config, store=store, role=role)
    declared = {
        name
        for name in ("users", "graph", "latest_lists", "profiles")
        if getattr(streams, name) is not None
    }
    assert declared == ROLE_TABLES[role]
    assert streams.app.conf.id == role_app_id(config.app_id, role)
    changelogs = {t.changelog_topic.get_topic_name() for t in streams.app.tables.values()}
    assert all(name.startswith(f"{streams.app.conf.id}-") for name in changelogs)
    assert streams.carries_user_state is (role == "stream")
    # Users wait for a scorer in the processes that run one (role all: from its own fold).
    assert (streams.pending is not None) is (role in ("all", "scorer"))
    # Tables are keyed by the raw UTF-8 id, the bytes producers key clicks with.
    for table in streams.app.tables.values():
        assert table.key_serializer == "raw"
        assert table.changelog_topic.key_serializer == "raw"
    if streams.users is not None:  # typed states, through their to_bytes / from_bytes
        assert streams.users.value_serializer == USER_STATE_CODEC
    if streams.graph is not None:
        assert streams.graph.value_serializer == ITEM_STATE_CODEC


def test_split_roles_keep_their_own_local_qdrant_folder(tmp_path: Path) -> None:
    config = GenreConfig(data_dir=str(tmp_path))
    assert role_config(config, "all") is config
    folders = {config.path(role_config(config, r).qdrant.path) for r in ("stream", "scorer")}
    assert folders == {tmp_path / "qdrant" / "stream", tmp_path / "qdrant" / "scorer"}
    server = GenreConfig(data_dir=str(tmp_path), qdrant={"url": "http://qdrant:6333"})
    assert role_config(server, "scorer") is server  # one server, shared


def test_a_score_request_carries_the_users_state_across_processes() -> None:
    """Role stream -> role scorer: the context the fold made travels as a ScoreRequest
    and comes back as the same context (the scorer keeps no user table)."""
    state = UserState(history=["i1", "i2"], seen=dict.fromkeys(["i0", "i1", "i2"]), clicks=3)
    state.vector = np.array([0.6, 0.8], np.float32)
    ctx = context_of(
        state,
        user_id="u1",
        event_id="e1",
        produced_at=1_700_000_001.0,
        ts=1_700_000_000.0,
        clicked_items=["i1", "i2"],
        taken_at=1_700_000_001.5,
        folded_at=1_700_000_001.75,
    )
    # Through the wire format and back, as the scorer in another process reads it.
    wire = ScoreRequests(requests=[to_request(ctx)]).to_bytes()
    assert b"i0" in wire and b"0.6" not in wire  # the seen set travels; the vector as base64
    (req,) = ScoreRequests.from_bytes(wire).requests
    assert isinstance(req, ScoreRequest)
    assert req.recent_items == ["i1", "i2"] and req.seen_items == ["i0", "i1", "i2"]
    assert req.clicks == 3 and req.clicked_items == ["i1", "i2"]
    np.testing.assert_array_equal(decode_vector(req.vector_b64), np.float32([0.6, 0.8]))
    got = from_request(req, received_at=1_700_000_002.0)
    assert got.user_id == "u1" and got.trigger_event_id == "e1"
    assert (got.trigger_produced_at, got.trigger_ts) == (1_700_000_001.0, 1_700_000_000.0)
    assert got.history == ("i1", "i2") and list(got.clicked_items) == ["i1", "i2"]
    assert all(i in got.seen for i in ("i0", "i1", "i2")) and "i3" not in got.seen
    assert got.clicks == 3
    np.testing.assert_array_equal(got.vector, ctx.vector)
    assert (got.taken_at, got.folded_at, got.received_at) == (
        1_700_000_001.5,
        1_700_000_001.75,
        1_700_000_002.0,
    )
    assert hops(got, 1_700_000_002.0, 1_700_000_002.0)["handoff"] == pytest.approx(250.0)


def test_a_request_without_vector_or_fold_times() -> None:
    """A user whose clicks had no item vector yet, and a request from an older stream role
    (no fold times): the hops fall back to the click's produce time."""
    req = ScoreRequest(
        user_id="u2",
        trigger_event_id="e2",
        trigger_produced_at=10.0,
        trigger_ts=9.0,
        recent_items=["i1"],
    )
    got = from_request(req, received_at=11.0)
    assert got.vector is None and got.clicks == 0
    assert got.taken_at == got.folded_at == 10.0
    assert to_request(got).vector_b64 is None


def test_worker_refuses_an_unknown_role_before_touching_kafka(tmp_path: Path) -> None:
    # The configured broker does not exist: an unchecked role would wait for it first.
    config = tmp_path / "genre.yaml"
    config.write_text("kafka: {bootstrap_servers: '127.0.0.1:9', connect_timeout_s: 30}\n")
    done = subprocess.run(
        [sys.executable, "-m", "genre", "worker", "--config", str(config), "--role", "rank"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    said = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    assert "worker role must be one of all, stream, encoder, scorer, not 'rank'" in said
