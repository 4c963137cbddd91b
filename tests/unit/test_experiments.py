"""A/B arms: assignment, arm configs, the armed scorer, and the per-arm report figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from genre.core.config import ConfigError, GenreConfig, load_config
from genre.core.experiments import (
    NO_LIST,
    ArmOutcome,
    arms_summary,
    online_outcomes,
    overall_hit_rate,
    user_position,
)
from genre.workers.experiments import ArmedScorer

from .test_scorer import _ctx, _graph, _views

USERS = [f"user-{i}" for i in range(2_000)]


def _config(tmp: Path, policy: str = "fixed", **arms: dict) -> GenreConfig:
    specs = [{"name": name, **spec} for name, spec in arms.items()]
    return GenreConfig(
        data_dir=str(tmp),
        encoder={"dim": 3},
        scorer={"top_k": 4},
        experiments={"enabled": True, "policy": policy, "floor": 0.1, "arms": specs},
    )


def test_user_position_is_a_stable_salted_uniform_hash() -> None:
    positions = np.array([user_position(u, "s1") for u in USERS])
    assert positions.min() >= 0.0 and positions.max() < 1.0
    assert [user_position(u, "s1") for u in USERS[:50]] == list(positions[:50])
    # uniform: each tenth of [0, 1) holds about a tenth of the users
    counts = np.histogram(positions, bins=10, range=(0.0, 1.0))[0]
    assert counts.min() > 140 and counts.max() < 260, counts
    other = np.array([user_position(u, "s2") for u in USERS])
    assert np.corrcoef(positions, other)[0, 1] < 0.1  # a new salt reshuffles


def test_arm_config_applies_the_overlay_and_turns_the_ranker_off(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, a={"share": 3.0, "scorer": {"top_k": 7}}, b={"share": 1.0, "ranker": "off"}
    )
    assert cfg.experiments.shares() == {"a": 0.75, "b": 0.25}
    a, b = cfg.arm_config("a"), cfg.arm_config("b")
    assert a.scorer.top_k == 7 and a.ranker.enabled == cfg.ranker.enabled
    assert b.scorer.top_k == 4 and b.ranker.enabled == "off"
    assert cfg.scorer.top_k == 4  # the base is left alone
    with pytest.raises(KeyError, match="no arm 'c'"):
        cfg.arm_config("c")


def test_a_bad_arm_overlay_names_the_arm_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "genre.yaml"
    path.write_text(
        "experiments:\n  enabled: true\n  arms:\n"
        "    - {name: a}\n    - {name: b, scorer: {top_k: lots}}\n"
    )
    with pytest.raises(ConfigError, match=r"experiments\.arms\[1\] \(b\): scorer\.top_k"):
        load_config(path, environ={})
    path.write_text("experiments: {enabled: true, arms: [{name: a}]}\n")
    with pytest.raises(ConfigError, match="at least two arms"):
        load_config(path, environ={})


def test_armed_scorer_scores_each_user_with_the_worker_of_their_arm(tmp_path: Path) -> None:
    cfg = _config(tmp_path, short={"scorer": {"top_k": 2}}, long={"scorer": {"top_k": 4}})
    scorer = ArmedScorer(cfg, _views(_graph()), "v1")
    scorer.prepare()
    users = [f"u{i}" for i in range(40)]
    batch = [_ctx(["a"], user=u, vector=np.array([1.0, 0.0, 0.0], np.float32)) for u in users]
    lists = scorer.score(batch)
    assert [s.ctx.user_id for s in lists] == users  # the batch's order
    arms = {s.ctx.user_id: s.arm for s in lists}
    assert set(arms.values()) == {"short", "long"}
    for s in lists:
        record = orjson.loads(s.value)
        assert record["arm"] == s.arm == scorer.arm_of(s.ctx.user_id)
        assert len(record["items"]) == (2 if s.arm == "short" else 4)
    # A restarted worker puts every user in the same arm (the config alone decides).
    again = ArmedScorer(cfg, _views(_graph()), "v1")
    assert {u: again.arm_of(u) for u in users} == arms


def test_fixed_shares_split_users_in_proportion(tmp_path: Path) -> None:
    cfg = _config(tmp_path, a={"share": 0.8}, b={"share": 0.2})
    scorer = ArmedScorer(cfg, _views(_graph()), "v1")
    share_a = sum(scorer.arm_of(u) == "a" for u in USERS) / len(USERS)
    assert 0.76 < share_a < 0.84


def test_the_bandit_moves_traffic_and_keeps_its_evidence_across_restarts(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, "thompson", good={}, bad={})
    scorer = ArmedScorer(cfg, _views(_graph()), "v1")
    assert scorer.reallocate() == pytest.approx({"good": 0.5, "bad": 0.5}, abs=0.05)
    scorer.observe_arm("good", 2_000, 200)
    scorer.observe_arm("bad", 2_000, 100)
    scorer.observe_arm("gone", 10, 10)  # an arm the config no longer has: ignored
    shares = scorer.reallocate()
    assert shares["good"] == pytest.approx(0.9, abs=0.01)  # all but the floor
    assert shares["bad"] == pytest.approx(0.1, abs=0.01)
    good = sum(scorer.arm_of(u) == "good" for u in USERS) / len(USERS)
    assert 0.86 < good < 0.94
    restarted = ArmedScorer(cfg, _views(_graph()), "v1")
    assert restarted.allocator.stats()["good"].clicks == 2_000
    assert restarted.reallocate()["good"] == pytest.approx(0.9, abs=0.01)


def test_online_outcomes_count_each_click_for_the_arm_of_the_list_shown() -> None:
    lists = {
        "u1": [(10.0, ["a", "b"], "x"), (20.0, ["c"], "y")],
        "u2": [(5.0, ["d"], "y")],
    }
    clicks = [
        ("u1", "a", 15.0),  # list at 10 (x): hit
        ("u1", "a", 25.0),  # list at 20 (y): miss
        ("u1", "c", 30.0),  # y: hit
        ("u1", "b", 5.0),  # before any list
        ("u2", "d", 6.0),  # y: hit
        ("u3", "d", 6.0),  # never had a list
    ]
    out = online_outcomes(clicks, lists, k=10)
    assert out == {
        "x": ArmOutcome(clicks=1, hits=1),
        "y": ArmOutcome(clicks=3, hits=2),
        NO_LIST: ArmOutcome(clicks=2, hits=0),
    }
    assert overall_hit_rate(out) == pytest.approx(3 / 6)
    assert online_outcomes([("u1", "b", 15.0)], lists, k=1)["x"].hits == 0  # top-k only


def test_arms_summary_gives_intervals_and_the_test_of_the_difference() -> None:
    summary = arms_summary(
        {
            "a": ArmOutcome(clicks=1_000, hits=100),
            "b": ArmOutcome(clicks=1_000, hits=60),
            NO_LIST: ArmOutcome(clicks=7),
        }
    )
    assert summary["clicks_before_a_list"] == 7
    a = summary["arms"]["a"]
    assert a["hit_rate"] == 0.1
    assert a["ci95"][0] < 0.1 < a["ci95"][1]
    [test] = summary["tests"]
    assert test["arms"] == ["a", "b"] and test["difference"] == 0.04
    assert test["p_value"] < 0.01 and test["ci95"][0] > 0
