"""The command line against a real broker and worker: produce, tail, broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genre.core.broker import free_port, wait_for_broker
from genre.schemas import Recommendation

from .conftest import Pipeline

pytestmark = pytest.mark.broker


def genre(*args: str, stdin: str | None = None, timeout: float = 120) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "genre", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_produce_counts_sent_rejected_and_duplicates(pipeline: Pipeline, tmp_path: Path) -> None:
    lines = [
        {"event_id": "cli-1", "user_id": "cli-user", "item_id": "space-1", "ts": 1.7e9},
        {"event_id": "cli-2", "user_id": "cli-user", "item_id": "space-2", "ts": 1.7e9},
        {"event_id": "cli-1", "user_id": "cli-user", "item_id": "space-1", "ts": 1.7e9},
        {"event_id": "cli-3", "user_id": "cli-user", "ts": 1.7e9},
    ]
    source = tmp_path / "clicks.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n\n")
    routed = {
        route: pipeline.worker.metric("genre_clicks_routed_total", route=route)
        for route in ("in_place", "rekeyed")
    }
    out = genre("produce", str(source), "--config", str(pipeline.config_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "sent": 2,
        "rejected": 2,
        "duplicates_skipped": 1,
    }
    assert "line 4 rejected" in out.stderr and "item_id" in out.stderr
    pipeline.recommendations(until_triggers={"cli-2"})
    # `genre produce` keys clicks by user id with Kafka's murmur2 partitioner: both land
    # in the partition of the user's state and are folded there, none re-keyed.
    pipeline.worker.wait_metric(
        "genre_clicks_routed_total", routed["in_place"] + 2, timeout_s=30, route="in_place"
    )
    assert (
        pipeline.worker.metric("genre_clicks_routed_total", route="rekeyed") == (routed["rekeyed"])
    )


def test_produce_from_stdin_and_tail(pipeline: Pipeline) -> None:
    event = {"event_id": "cli-s1", "user_id": "cli-tail", "item_id": "crime-2", "ts": 1.7e9}
    out = genre("produce", "-", "--config", str(pipeline.config_path), stdin=json.dumps(event))
    assert out.returncode == 0, out.stderr
    pipeline.recommendations(until_triggers={"cli-s1"})
    out = genre(
        "tail",
        "recommendations",
        "--config",
        str(pipeline.config_path),
        "--from-beginning",
        "--json",
        "--limit",
        "1",
    )
    assert out.returncode == 0, out.stderr
    rec = Recommendation.model_validate_json(out.stdout.strip().splitlines()[0])
    assert rec.items
    out = genre(
        "tail",
        "recommendations",
        "--config",
        str(pipeline.config_path),
        "--from-beginning",
        "--limit",
        "1",
    )
    assert "because you watched" in out.stderr or "trending now" in out.stderr


def _broker_command(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `genre broker`; return it and what it said once it said it is ready."""
    port = free_port()
    config = tmp_path / "genre.yaml"
    config.write_text(f"data_dir: {tmp_path}\nkafka: {{embedded: {{port: {port}}}}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genre", "broker", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The command is ready once it says so (its topics are made by then), not when
    # the broker first answers: a signal before that would land mid-start.
    said = ""
    while "broker ready" not in said and proc.poll() is None:
        said += proc.stderr.readline()  # type: ignore[union-attr]
    wait_for_broker(f"127.0.0.1:{port}", timeout_s=30)
    return proc, said


def test_broker_command_starts_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc, said = _broker_command(tmp_path)
    try:
        assert "broker ready" in said, said
        proc.send_signal(signal.SIGINT)
        # EmbeddedBroker.stop waits up to 10 s for SIGTERM, then 5 s after SIGKILL;
        # a loaded CI machine once needed more than 20 s here in all.
        _, err = proc.communicate(timeout=45)
        err = said + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "broker ready" in err and "broker stopped" in err


def test_broker_command_fails_loudly_when_its_broker_dies(tmp_path: Path) -> None:
    proc, said = _broker_command(tmp_path)
    try:
        assert "broker ready" in said, said
        # The broker runs in its own process group, a child of the command: kill it.
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert children, "genre broker started no broker process"
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        _, err = proc.communicate(timeout=45)
        err = said + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    message = " ".join(err.split())
    assert "broker died" in message and "broker stopped" not in message
    assert "code -9" in message
