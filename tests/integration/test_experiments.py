"""A/B arms through the real worker and broker: every list names the arm the config
assigns its user to, assignment survives a restart, and `genre experiments report`
reads each arm's online HR@10 back from the topics."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genre.core.bandit import assign
from genre.core.experiments import user_position

from .conftest import GENRES, Pipeline, click, running_pipeline

pytestmark = [pytest.mark.broker, pytest.mark.model]

#: Two arms that differ visibly: lists of 3 and of 6 items.
EXPERIMENT = {
    "enabled": True,
    "salt": "it-salt",
    "arms": [
        {"name": "short", "share": 0.5, "scorer": {"top_k": 3}},
        {"name": "long", "share": 0.5, "scorer": {"top_k": 6}},
    ],
}
SHARES = {"short": 0.5, "long": 0.5}
TOP_K = {"short": 3, "long": 6}


def _expected_arm(user: str) -> str:
    return assign(user_position(user, EXPERIMENT["salt"]), SHARES)  # type: ignore[arg-type]


def _users() -> list[str]:
    """Three users of each arm, as the config alone assigns them."""
    picked: dict[str, list[str]] = {"short": [], "long": []}
    n = 0
    while min(len(v) for v in picked.values()) < 3:
        user = f"ab-user-{n}"
        arm = _expected_arm(user)
        if len(picked[arm]) < 3:
            picked[arm].append(user)
        n += 1
    return picked["short"] + picked["long"]


@pytest.fixture
def armed(broker: Any, encoder_dir: Path, tmp_path: Path) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path, broker.bootstrap, encoder_dir, experiments=EXPERIMENT) as p:
        yield p


def test_lists_name_the_configured_arm_across_a_restart_and_the_report_reads_them(
    armed: Pipeline, tmp_path: Path
) -> None:
    p = armed
    users = _users()
    genres = list(GENRES)
    first = [click(f"ab-{u}-1", u, f"{genres[i % 4]}-0") for i, u in enumerate(users)]
    p.send_clicks(first)
    recs = p.recommendations(until_triggers={e.event_id for e in first})
    for rec in recs:
        assert rec.arm == _expected_arm(rec.user_id), rec.user_id
        assert len(rec.items) == TOP_K[rec.arm]

    # Clicks on the lists just made count for their arms: one hit per user, on the
    # top item of the list that user was shown.
    shown = {r.user_id: r.items[0].item_id for r in recs}
    second = [click(f"ab-{u}-2", u, shown[u], ts=1_700_000_200.0) for u in users]
    p.send_clicks(second)
    p.recommendations(until_triggers={e.event_id for e in second})

    # A restarted worker assigns every user the same arm.
    assert p.worker.stop() is not None
    p.worker.start(ready_timeout_s=120)
    third = [click(f"ab-{u}-3", u, f"{genres[(i + 1) % 4]}-1") for i, u in enumerate(users)]
    p.send_clicks(third)
    again = p.recommendations(until_triggers={e.event_id for e in third})
    for rec in again:
        if rec.trigger_event_id.endswith("-3"):
            assert rec.arm == _expected_arm(rec.user_id)

    command = ["experiments", "report", "--config", str(p.config_path), "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "genre", *command, "--timeout-s", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(report["arms"]) == {"short", "long"}
    for arm in ("short", "long"):
        row = report["arms"][arm]
        # the second and third rounds were clicked on a list of the arm: 2 x 3 users
        assert row["clicks"] == 6, row
        assert row["hits"] >= 3, row  # the second round hit its list's top item
        low, high = row["ci95"]
        assert low <= row["hit_rate"] <= high
    assert report["clicks_before_a_list"] == len(users)  # the first round
    [test] = report["tests"]
    assert set(test["arms"]) == {"short", "long"} and 0.0 <= test["p_value"] <= 1.0
