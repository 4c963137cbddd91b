"""Intervals and tests for proportions (online hit rates per arm); stdlib ``math`` only.

* ``wilson_interval``: the Wilson score interval of one proportion (hits out of
  clicks), which stays inside [0, 1] and behaves at 0 and 1 hits, unlike the
  normal ("Wald") interval.
* ``two_proportion_test``: the difference of two proportions with its normal
  confidence interval (unpooled standard error) and the two-sided z-test of "no
  difference" (pooled standard error, as the test assumes both share one rate).

The defaults give 95% intervals (z = 1.96).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Z95", "TwoProportionResult", "two_proportion_test", "wilson_interval"]

#: two-sided 95% normal quantile, as the reports round it
Z95 = 1.96


def _check_counts(successes: int, trials: int, what: str) -> None:
    """Raise ValueError unless 0 <= successes <= trials (integers, not bools)."""
    for name, value in ((f"{what} successes", successes), (f"{what} trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(
            f"{what}: need 0 <= successes <= trials, got successes={successes}, trials={trials}"
        )


def _check_z(z: float) -> None:
    if not (z > 0 and math.isfinite(z)):
        raise ValueError(f"z must be a positive finite number, got {z!r}")


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes / trials``; ``(0.0, 1.0)`` when ``trials`` is 0."""
    _check_counts(successes, trials, "wilson_interval")
    _check_z(z)
    if trials == 0:
        return (0.0, 1.0)
    n = float(trials)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class TwoProportionResult:
    """Arm 1 against arm 2: ``difference = p1 - p2``, its CI, and the z-test of p1 == p2."""

    p1: float
    p2: float
    #: p1 - p2
    difference: float
    #: normal CI of the difference with the unpooled standard error
    ci_low: float
    ci_high: float
    #: difference / se_pooled (0.0 when se_pooled is 0: both arms all hits or all misses)
    z: float
    #: two-sided p-value of z under the normal: erfc(|z| / sqrt(2))
    p_value: float
    #: sqrt(p(1-p)(1/n1 + 1/n2)) with p the pooled rate; the test's standard error
    se_pooled: float
    #: sqrt(p1(1-p1)/n1 + p2(1-p2)/n2); the interval's standard error
    se_unpooled: float

    @property
    def ci(self) -> tuple[float, float]:
        """The confidence interval of the difference as a pair."""
        return (self.ci_low, self.ci_high)


def two_proportion_test(h1: int, n1: int, h2: int, n2: int, z: float = Z95) -> TwoProportionResult:
    """Compare ``h1/n1`` with ``h2/n2`` (hits out of clicks); ``z`` sets the CI's level.

    Both ``n1`` and ``n2`` must be at least 1: with no clicks an arm has no rate
    to compare (report its Wilson interval, ``(0, 1)``, instead).
    """
    _check_counts(h1, n1, "arm 1")
    _check_counts(h2, n2, "arm 2")
    _check_z(z)
    if n1 == 0 or n2 == 0:
        raise ValueError(
            f"two_proportion_test needs at least one trial per arm, got n1={n1}, n2={n2}"
        )
    p1, p2 = h1 / n1, h2 / n2
    diff = p1 - p2
    se_unpooled = math.sqrt(p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2)
    pooled = (h1 + h2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    z_stat = diff / se_pooled if se_pooled > 0 else 0.0
    return TwoProportionResult(
        p1=p1,
        p2=p2,
        difference=diff,
        ci_low=diff - z * se_unpooled,
        ci_high=diff + z * se_unpooled,
        z=z_stat,
        p_value=math.erfc(abs(z_stat) / math.sqrt(2.0)),
        se_pooled=se_pooled,
        se_unpooled=se_unpooled,
    )
