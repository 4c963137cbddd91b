"""core/stats.py: Wilson intervals and the two-proportion test, against hand-computed values
(and scipy.stats when it is installed)."""

from __future__ import annotations

import math

import pytest

from genre.core.stats import TwoProportionResult, two_proportion_test, wilson_interval

try:
    import scipy.stats as sps
except ImportError:  # scipy is only a cross-check
    sps = None

needs_scipy = pytest.mark.skipif(sps is None, reason="scipy is not installed")


# -- Wilson ------------------------------------------------------------------------------


def test_wilson_hand_computed() -> None:
    # p = 0.1, n = 100, z^2 = 3.8416: centre = 0.119208 / 1.038416 = 0.114798,
    # half = 1.96 * sqrt(0.0009 + 0.00009604) / 1.038416 = 0.059569
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552285, abs=1e-6)
    assert high == pytest.approx(0.1743673, abs=1e-6)


def test_wilson_at_zero_and_all() -> None:
    # 0 of 10: centre = half = (3.8416 / 20) / 1.38416 = 0.138770
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775401), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.7224599, 1.0), abs=1e-6)
    assert wilson_interval(0, 10)[0] == 0.0  # exactly, not -1e-17
    assert wilson_interval(10, 10)[1] == 1.0


def test_wilson_no_trials_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_is_symmetric_and_contains_estimate() -> None:
    for hits, n in [(1, 7), (3, 40), (953, 10_000), (59, 1000)]:
        low, high = wilson_interval(hits, n)
        assert 0.0 <= low < hits / n < high <= 1.0
        mlow, mhigh = wilson_interval(n - hits, n)
        assert mlow == pytest.approx(1.0 - high, abs=1e-12)
        assert mhigh == pytest.approx(1.0 - low, abs=1e-12)


def test_wilson_narrows_with_more_trials_and_widens_with_z() -> None:
    small = wilson_interval(10, 100)
    big = wilson_interval(1000, 10_000)
    assert big[1] - big[0] < small[1] - small[0]
    wide = wilson_interval(10, 100, z=2.576)
    assert wide[0] < small[0] and wide[1] > small[1]


@pytest.mark.parametrize(
    ("successes", "trials"), [(-1, 10), (11, 10), (0, -1)], ids=["negative", "over", "trials<0"]
)
def test_wilson_rejects_bad_counts(successes: int, trials: int) -> None:
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(successes, trials)


def test_wilson_rejects_non_int_and_bad_z() -> None:
    with pytest.raises(TypeError):
        wilson_interval(1.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="z must be"):
        wilson_interval(1, 10, z=0.0)


@needs_scipy
@pytest.mark.parametrize(("successes", "trials"), [(10, 100), (0, 25), (25, 25), (953, 10_000)])
def test_wilson_matches_scipy(successes: int, trials: int) -> None:
    assert sps is not None
    z = float(sps.norm.ppf(0.975))
    ci = sps.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(successes, trials, z=z)
    assert low == pytest.approx(float(ci.low), abs=1e-9)
    assert high == pytest.approx(float(ci.high), abs=1e-9)


# -- two proportions ---------------------------------------------------------------------


def test_two_proportion_hand_computed() -> None:
    # 95/1000 vs 59/1000 (the ranker's and the older scorer's online HR@10, per 1000 clicks)
    r = two_proportion_test(95, 1000, 59, 1000)
    assert isinstance(r, TwoProportionResult)
    assert (r.p1, r.p2) == (0.095, 0.059)
    assert r.difference == pytest.approx(0.036, abs=1e-12)
    # unpooled: sqrt(0.095*0.905/1000 + 0.059*0.941/1000) = sqrt(0.000141494) = 0.0118951
    assert r.se_unpooled == pytest.approx(0.0118951, abs=1e-7)
    assert r.ci == pytest.approx((0.036 - 1.96 * 0.0118951, 0.036 + 1.96 * 0.0118951), abs=1e-6)
    # pooled: p = 154/2000 = 0.077, sqrt(0.077*0.923*0.002) = sqrt(0.000142142) = 0.0119223
    assert r.se_pooled == pytest.approx(0.0119223, abs=1e-7)
    assert r.z == pytest.approx(0.036 / 0.0119223, rel=1e-5)  # 3.0195
    assert r.p_value == pytest.approx(0.0025316, abs=1e-6)


def test_two_proportion_swapped_arms_flip_the_sign_only() -> None:
    a = two_proportion_test(95, 1000, 59, 1200)
    b = two_proportion_test(59, 1200, 95, 1000)
    assert b.difference == pytest.approx(-a.difference)
    assert b.z == pytest.approx(-a.z)
    assert b.p_value == pytest.approx(a.p_value)
    assert b.ci == pytest.approx((-a.ci_high, -a.ci_low))


def test_two_proportion_equal_rates() -> None:
    r = two_proportion_test(50, 500, 100, 1000)
    assert r.difference == 0.0 and r.z == 0.0 and r.p_value == 1.0
    assert r.ci_low < 0.0 < r.ci_high


def test_two_proportion_degenerate_rates() -> None:
    # all misses (or all hits) on both sides: no variance, no evidence of a difference
    for h1, h2 in [(0, 0), (10, 20)]:
        r = two_proportion_test(h1, 10, h2, 20)
        assert r.se_pooled == 0.0 and r.z == 0.0 and r.p_value == 1.0
        assert r.ci == (0.0, 0.0)


def test_two_proportion_p_value_is_two_sided_normal() -> None:
    r = two_proportion_test(120, 1000, 100, 1000)
    one_sided = 0.5 * (1.0 + math.erf(-abs(r.z) / math.sqrt(2.0)))
    assert r.p_value == pytest.approx(2.0 * one_sided, rel=1e-12)
    assert 0.0 < r.p_value < 1.0


def test_two_proportion_rejects_empty_and_bad_counts() -> None:
    with pytest.raises(ValueError, match="at least one trial per arm"):
        two_proportion_test(0, 0, 5, 10)
    with pytest.raises(ValueError, match="arm 2"):
        two_proportion_test(1, 10, 11, 10)


@needs_scipy
@pytest.mark.parametrize(
    ("h1", "n1", "h2", "n2"),
    [(95, 1000, 59, 1000), (953, 10_000, 586, 10_000), (3, 40, 9, 35), (120, 1000, 100, 1000)],
)
def test_two_proportion_matches_scipy(h1: int, n1: int, h2: int, n2: int) -> None:
    # the pooled z-test is the uncorrected chi-square test of the 2x2 table: chi2 = z^2
    assert sps is not None
    chi2, p, _, _ = sps.chi2_contingency([[h1, n1 - h1], [h2, n2 - h2]], correction=False)
    r = two_proportion_test(h1, n1, h2, n2)
    assert r.z**2 == pytest.approx(float(chi2), rel=1e-9)
    assert r.p_value == pytest.approx(float(p), rel=1e-7)
    assert r.p_value == pytest.approx(2.0 * float(sps.norm.sf(abs(r.z))), rel=1e-9)
