"""A/B arms in the scorer: one ScorerWorker per arm, users split by the allocation policy.

Each arm is the base config with its ``scorer`` overlay (``GenreConfig.arm_config``)
and, when the arm says ``ranker: off``, no learned ranker. A batch of waiting users is
split by arm, each part scored by its arm's worker on the scorer thread, and the lists
come back in the batch's order, each naming its arm.

The policy (``experiments.policy``) is ``fixed`` (the arms' shares) or ``thompson``
(``core.bandit.ThompsonAllocator``: traffic moves toward the arm with more online hits,
``floor`` of it stays on every arm). Its evidence (clicks and hits per arm) is saved to
``<data_dir>/experiments/<app_id>-bandit.json`` at every re-allocation and read back at
start, so a restarted worker keeps what it learnt. Each worker process runs its own
policy over the users of its partitions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from genre.core.bandit import Allocator, FixedAllocator, StateMismatchError, ThompsonAllocator
from genre.core.bandit import assign as assign_arm
from genre.core.config import GenreConfig
from genre.core.experiments import user_position
from genre.core.telemetry import METRICS
from genre.streams.score_context import ScoreContext
from genre.streams.views import ScorerViews
from genre.workers.ranker import RankerHandle
from genre.workers.scorer import ScoredList, ScorerWorker

log = logging.getLogger(__name__)


def build_allocator(config: GenreConfig) -> Allocator:
    """The allocation policy ``experiments.policy`` names, over the configured arms."""
    exp = config.experiments
    if exp.policy == "thompson":
        return ThompsonAllocator([a.name for a in exp.arms], floor=exp.floor)
    return FixedAllocator(exp.shares())


class ArmedScorer:
    """Scores each user with the worker of their arm; counts per-arm outcomes."""

    def __init__(
        self,
        config: GenreConfig,
        views: ScorerViews,
        model_version: str,
        ranker: RankerHandle | None = None,
    ) -> None:
        exp = config.experiments
        self.salt = exp.salt
        self.arms: dict[str, ScorerWorker] = {
            arm.name: ScorerWorker(
                config.arm_config(arm.name),
                views,
                model_version,
                ranker if arm.ranker == "inherit" else None,
                arm=arm.name,
            )
            for arm in exp.arms
        }
        self.ranker = ranker
        self.model_version = "+".join(f"{a}:{w.model_version}" for a, w in self.arms.items())
        self.allocator = build_allocator(config)
        self.state_path = config.path("experiments") / f"{config.app_id}-bandit.json"
        self._load_state()
        self._shares = self.allocator.shares()
        self._seen: dict[str, set[str]] = {a: set() for a in self.arms}
        self._lock = threading.Lock()
        self._publish_shares()
        for arm in self.arms:  # every arm's series from the start, at 0: rates work at once
            for counter in (METRICS.arm_lists, METRICS.arm_online_clicks, METRICS.arm_online_hits):
                counter.labels(arm)

    def arm_of(self, user_id: str) -> str:
        """The arm ``user_id`` is in under the current shares."""
        return assign_arm(user_position(user_id, self.salt), self._shares)

    def prepare(self) -> None:
        """Refresh every arm's sources (on the event loop, before a batch)."""
        for worker in self.arms.values():
            worker.prepare()

    def score(self, batch: Sequence[ScoreContext]) -> list[ScoredList]:
        """One list per context, each from its user's arm, in the batch's order."""
        parts: dict[str, list[int]] = {}
        for i, ctx in enumerate(batch):
            parts.setdefault(self.arm_of(ctx.user_id), []).append(i)
        out: list[ScoredList | None] = [None] * len(batch)
        for arm, rows in parts.items():
            lists = self.arms[arm].score([batch[i] for i in rows])
            seen = self._seen[arm]
            for i, scored in zip(rows, lists, strict=True):
                out[i] = scored
                seen.update(scored.items)
            METRICS.arm_coverage.labels(arm).set(len(seen))
        return [s for s in out if s is not None]

    def observe_arm(self, arm: str, clicks: int, hits: int) -> None:
        """Clicks made on a list of ``arm`` and how many hit it (the policy's evidence)."""
        if arm not in self.arms:
            return  # a list from an arm this config no longer has
        METRICS.arm_online_clicks.labels(arm).inc(clicks)
        if hits:
            METRICS.arm_online_hits.labels(arm).inc(hits)
        with self._lock:
            self.allocator.observe(arm, clicks, hits)

    def reallocate(self) -> dict[str, float]:
        """Recompute the shares from the evidence so far and save the evidence."""
        with self._lock:
            self._shares = self.allocator.shares()
            state = self.allocator.to_state()
        self._publish_shares()
        self._save_state(state)
        return dict(self._shares)

    def _publish_shares(self) -> None:
        for arm, share in self._shares.items():
            METRICS.arm_share.labels(arm).set(share)

    def _load_state(self) -> None:
        if not self.state_path.is_file():
            return
        try:
            self.allocator.from_state(json.loads(self.state_path.read_text()), "map")
        except (ValueError, StateMismatchError) as exc:
            log.warning(
                "ignoring the saved experiment state in %s (%s); delete it to silence this",
                self.state_path,
                exc,
            )

    def _save_state(self, state: dict[str, object]) -> None:
        path: Path = self.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
