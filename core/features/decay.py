"""Exponential time decay: the one rule behind edge weights, trending and user vectors.

Every decayed quantity in GENRE is a sum whose old value halves every
``half_life_s`` seconds of *event* time. The stream, the training replay and
the evaluation all call these functions, on single numbers (one item's state)
or on numpy arrays (every item at once); the formula lives only here.
"""

from __future__ import annotations

import math
from typing import TypeVar, overload

import numpy as np

LN2 = math.log(2.0)

Num = TypeVar("Num", float, np.ndarray)


@overload
def decay(age_s: float, half_life_s: float) -> float: ...
@overload
def decay(age_s: np.ndarray, half_life_s: float) -> np.ndarray: ...
def decay(age_s: float | np.ndarray, half_life_s: float) -> float | np.ndarray:
    """The factor an age in seconds decays by: 1.0 at age 0 (and for negative ages,
    i.e. out-of-order events), 0.5 at one half-life; 1.0 always for an infinite one."""
    if isinstance(age_s, np.ndarray):
        return np.exp(-LN2 * np.maximum(age_s, 0.0) / half_life_s)
    return math.exp(-LN2 * max(age_s, 0.0) / half_life_s)


def decayed(value: Num, last: Num, now: float, half_life_s: float) -> Num:
    """A decayed sum last updated at ``last``, read at ``now``."""
    return value * decay(now - last, half_life_s)


def accumulate(
    value: Num, last: Num, ts: float, weight: float, half_life_s: float
) -> tuple[Num, Num]:
    """Add ``weight`` at event time ``ts`` to a decayed sum; returns (value, last).

    ``last`` only moves forward: an event older than the sum's newest adds its
    weight undecayed (its age relative to the sum is taken as zero).
    """
    new_value = decayed(value, last, ts, half_life_s) + weight
    new_last = np.maximum(last, ts) if isinstance(last, np.ndarray) else max(last, ts)
    return new_value, new_last
