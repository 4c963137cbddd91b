"""The scorer worker serving an exported ranker through the real broker, and hot reloads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genre.export import export_ranker
from genre.model_export.ranker import RankerShape
from genre.schemas.ranker_manifest import load_ranker_manifest
from tests.integration.conftest import Pipeline, catalog, click, running_pipeline
from tests.ranker_checkpoints import write_random_checkpoint

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

CFG = RankerShape(text_dim=384, n_ids=25, dim=16, heads=2, history_len=50)
#: The same ranker with the LLM profile feature, as `genre train` makes with profiles on.
CFG_PROFILE = RankerShape(text_dim=384, n_ids=25, dim=16, heads=2, history_len=50, n_features=3)


def _deploy(root: Path, model_dir: Path, seed: int, *, profile: bool = False) -> str:
    vocab = [item.item_id for item in catalog()]
    cfg, names = (CFG_PROFILE, ("trending", "co_click", "profile")) if profile else (CFG, None)
    ckpt = write_random_checkpoint(
        root / f"ckpt-{seed}.pt",
        cfg,
        vocab,
        seed=seed,
        **({"feature_names": names} if names else {}),
    )
    return export_ranker(ckpt, model_dir, precisions=("fp32",)).version


@pytest.fixture
def ranked(broker: Any, encoder_dir: Path, tmp_path: Path) -> Iterator[tuple[Pipeline, Path, str]]:
    model_dir = tmp_path / "ranker"
    version = _deploy(tmp_path, model_dir, seed=0)
    with running_pipeline(
        tmp_path,
        broker.bootstrap,
        encoder_dir,
        ranker={"enabled": "on", "dir": str(model_dir), "reload_s": 0.5},
        llm={"profiles": {"enabled": True, "every_k_clicks": 3, "debounce_s": 0.1}},
    ) as p:
        yield p, model_dir, version


def test_lists_come_from_the_ranker_and_reloads_drop_nothing(
    ranked: tuple[Pipeline, Path, str], tmp_path: Path
) -> None:
    pipeline, model_dir, v1 = ranked
    users = [f"rk-{i}" for i in range(6)]
    space = [f"space-{i}" for i in range(6)]
    first = [
        click(f"rk1-{u}-{k}", u, space[(i + k) % 6], ts=1_700_000_100.0 + k)
        for i, u in enumerate(users)
        for k in range(3)
    ]
    pipeline.send_clicks(first)
    recs = pipeline.recommendations({e.event_id for e in first if e.event_id.endswith("-2")})
    latest = {r.user_id: r for r in recs}
    for i, u in enumerate(users):
        rec = latest[u]
        assert rec.model_version.startswith(f"ranker@{v1}/fp32"), rec.model_version
        clicked = {space[(i + k) % 6] for k in range(3)}
        ids = [item.item_id for item in rec.items]
        assert ids and not clicked & set(ids), (clicked, ids)
        scores = [item.score for item in rec.items]
        assert scores == sorted(scores, reverse=True)
        # Attention names a clicked item for every pick of a user with history.
        assert all(item.reason.startswith("because you watched") for item in rec.items)

    # Deploy a new version, one that also takes the users' LLM profiles (written after
    # their 3rd click), while clicks keep arriving: every click still gets a list.
    v2 = _deploy(tmp_path, model_dir, seed=1, profile=True)
    assert v2 != v1 and load_ranker_manifest(model_dir).version == v2
    second = []
    deadline = time.monotonic() + 60
    batch = 0
    while time.monotonic() < deadline:
        events = [
            click(f"rk2-{batch}-{u}", u, f"crime-{(batch + i) % 6}", ts=1_700_000_200.0 + batch)
            for i, u in enumerate(users)
        ]
        pipeline.send_clicks(events)
        second.extend(events)
        batch += 1
        recs = pipeline.recommendations({e.event_id for e in events})
        if any(r.model_version.startswith(f"ranker@{v2}") for r in recs):
            break
        time.sleep(0.5)
    triggers = {e.event_id for e in second}
    recs = pipeline.recommendations(triggers)
    versions = {r.model_version.split("/")[0] for r in recs if r.trigger_event_id in triggers}
    assert f"ranker@{v2}" in versions, versions
    answered = {r.trigger_event_id for r in recs}
    # Bursts coalesce per user, so check each user's last click of each round got its list.
    assert triggers <= answered or all(
        f"rk2-{b}-{u}" in answered for b in range(batch) for u in users
    )
    assert pipeline.worker.metric("genre_fallbacks_total", stage="ranker") == 0
