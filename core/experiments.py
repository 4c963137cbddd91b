"""A/B arms: which arm a user is in, and each arm's online hits.

A user's place in the traffic is a salted hash of their id, uniform in [0, 1);
the arm is the one whose share interval holds it (``genre.core.bandit.assign``).
With fixed shares that is reproducible from the config alone; under the bandit a
user moves only when the shares move past their place.

An online hit is a click on an item of the list the user had when clicking; the
click counts for the arm that made that list. Clicks before a user's first list
belong to no arm (``NO_LIST``).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from genre.core.stats import two_proportion_test, wilson_interval

#: The key of clicks made before the user had any list.
NO_LIST = "(no list yet)"

#: One list as the report sees it: when it was published, its items, its arm.
ListSeen = tuple[float, Sequence[str], str | None]


def user_position(user_id: str, salt: str) -> float:
    """The user's place in [0, 1): the first 8 bytes of sha256(salt:user_id)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class ArmOutcome:
    """Online clicks and hits of one arm."""

    clicks: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        """hits / clicks (0 without clicks)."""
        return self.hits / self.clicks if self.clicks else 0.0


def online_outcomes(
    clicks: Iterable[tuple[str, str, float]],
    lists_by_user: Mapping[str, Sequence[ListSeen]],
    k: int = 10,
) -> dict[str, ArmOutcome]:
    """Per arm: clicks ``(user, item, at)`` made while the user had one of its lists,
    and how many were on that list's top ``k``. ``lists_by_user`` is ordered by time;
    an arm of None (no experiment) is counted as ``"-"``."""
    times = {user: [t for t, _, _ in lists] for user, lists in lists_by_user.items()}
    out: dict[str, ArmOutcome] = {}
    for user, item, at in clicks:
        idx = bisect.bisect_left(times.get(user, []), at) - 1
        if idx < 0:
            out.setdefault(NO_LIST, ArmOutcome()).clicks += 1
            continue
        _, items, arm = lists_by_user[user][idx]
        outcome = out.setdefault(arm or "-", ArmOutcome())
        outcome.clicks += 1
        outcome.hits += item in items[:k]
    return out


def overall_hit_rate(outcomes: Mapping[str, ArmOutcome]) -> float:
    """Hits over every click, those before a first list included."""
    clicks = sum(o.clicks for o in outcomes.values())
    return sum(o.hits for o in outcomes.values()) / clicks if clicks else 0.0


def arms_summary(outcomes: Mapping[str, ArmOutcome]) -> dict[str, Any]:
    """Per arm: clicks, hits, online HR@k with its 95% Wilson interval; and the best
    arm against each other one (difference, its 95% interval, two-sided p-value)."""
    arms = {a: o for a, o in outcomes.items() if a != NO_LIST}
    table = {}
    for arm, o in sorted(arms.items()):
        low, high = wilson_interval(o.hits, o.clicks)
        table[arm] = {
            "clicks": o.clicks,
            "hits": o.hits,
            "hit_rate": round(o.hit_rate, 4),
            "ci95": [round(low, 4), round(high, 4)],
        }
    tests = []
    if len(arms) >= 2:
        best = max(arms, key=lambda a: (arms[a].hit_rate, a))
        for other in sorted(a for a in arms if a != best):
            b, o = arms[best], arms[other]
            if not (b.clicks and o.clicks):
                continue
            t = two_proportion_test(b.hits, b.clicks, o.hits, o.clicks)
            tests.append(
                {
                    "arms": [best, other],
                    "difference": round(t.difference, 4),
                    "ci95": [round(t.ci_low, 4), round(t.ci_high, 4)],
                    "z": round(t.z, 3),
                    "p_value": round(t.p_value, 4),
                }
            )
    unattributed = outcomes.get(NO_LIST)
    return {
        "arms": table,
        "tests": tests,
        "clicks_before_a_list": unattributed.clicks if unattributed else 0,
    }
