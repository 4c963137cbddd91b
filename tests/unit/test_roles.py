"""Worker roles: app ids, tables, per-role Qdrant folders, score requests that carry state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genre.core.config import GenreConfig
from genre.core.vectorstore import QdrantStore
from genre.schemas import ClickEvent, ScoreRequest, ScoreRequests, UserClick
from genre.streams.agents import score_request
from genre.streams.app import ROLES, build_streams, role_app_id
from genre.streams.state import decode_vector, encode_vector, new_user_state
from genre.workers.service import role_config


def _click(item: str = "i2") -> UserClick:
    event = ClickEvent(event_id="e1", user_id="u1", item_id=item, ts=1_700_000_000.0)
    return UserClick(event=event, produced_at=1_700_000_001.0, source_partition=0, source_offset=7)


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


def test_split_roles_keep_their_own_local_qdrant_folder(tmp_path: Path) -> None:
    config = GenreConfig(data_dir=str(tmp_path))
    assert role_config(config, "all") is config
    folders = {config.path(role_config(config, r).qdrant.path) for r in ("stream", "scorer")}
    assert folders == {tmp_path / "qdrant" / "stream", tmp_path / "qdrant" / "scorer"}
    server = GenreConfig(data_dir=str(tmp_path), qdrant={"url": "http://qdrant:6333"})
    assert role_config(server, "scorer") is server  # one server, shared


def test_score_request_carries_the_state_only_when_asked() -> None:
    state = new_user_state()
    state.update(history=["i1", "i2"], seen=["i0", "i1", "i2"], clicks=3)
    state["vector"] = encode_vector(np.array([0.6, 0.8], np.float32))
    bare = score_request(_click(), ["i2"], None)
    assert bare.clicked_items == ["i2"]
    assert (bare.recent_items, bare.seen_items, bare.clicks, bare.vector_b64) == ([], [], 0, None)
    carried = score_request(_click(), ["i1", "i2"], state)
    # Through the wire format and back, as the scorer in another process reads it.
    wire = ScoreRequests(requests=[carried]).to_bytes()
    (got,) = ScoreRequests.from_bytes(wire).requests
    assert isinstance(got, ScoreRequest)
    assert got.recent_items == ["i1", "i2"] and got.seen_items == ["i0", "i1", "i2"]
    assert got.clicks == 3 and got.clicked_items == ["i1", "i2"]
    assert got.trigger_event_id == "e1" and got.trigger_produced_at == 1_700_000_001.0
    np.testing.assert_array_equal(decode_vector(got.vector_b64), np.float32([0.6, 0.8]))


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
