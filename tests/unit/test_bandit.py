"""core/bandit.py: the Thompson and fixed allocators, their saved state, and assignment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genre.core.bandit import (
    STATE_VERSION,
    Allocator,
    ArmStats,
    FixedAllocator,
    StateMismatchError,
    ThompsonAllocator,
    arm_bounds,
    assign,
    assign_indices,
)

# -- ArmStats ----------------------------------------------------------------------------


def test_arm_stats_counts_and_rate() -> None:
    s = ArmStats().add(100, 9).add(900, 86)
    assert (s.clicks, s.hits, s.misses) == (1000, 95, 905)
    assert s.hit_rate == pytest.approx(0.095)
    assert ArmStats().hit_rate == 0.0


@pytest.mark.parametrize(("clicks", "hits"), [(-1, 0), (5, 6), (3, -1)])
def test_arm_stats_rejects_bad_counts(clicks: int, hits: int) -> None:
    with pytest.raises(ValueError, match="0 <= hits <= clicks"):
        ArmStats(clicks, hits)


# -- ThompsonAllocator: shares -----------------------------------------------------------


def test_no_data_shares_are_exactly_equal() -> None:
    for arms in (["a", "b"], ["x", "y", "z"], ["a", "b", "c", "d", "e"]):
        shares = ThompsonAllocator(arms, floor=0.05, seed=1).shares()
        assert set(shares) == set(arms)
        assert all(v == pytest.approx(1.0 / len(arms), abs=1e-15) for v in shares.values())


def test_identical_evidence_gives_equal_shares() -> None:
    alloc = ThompsonAllocator(["a", "b", "c"], floor=0.0, seed=1)
    for arm in alloc.arms:
        alloc.observe(arm, 500, 40)
    assert alloc.shares() == {a: pytest.approx(1 / 3) for a in "abc"}


def test_better_arm_gets_most_traffic() -> None:
    # 0.095 vs 0.059 online HR@10 over 2,000 clicks each: P(a is best) ~ 0.9999
    alloc = ThompsonAllocator(["ranker", "blend"], floor=0.05, draws=4000, seed=7)
    alloc.observe("ranker", 2000, 190)
    alloc.observe("blend", 2000, 118)
    shares = alloc.shares()
    assert shares["ranker"] > 0.8
    assert shares["blend"] >= 0.05
    assert shares["ranker"] == pytest.approx(0.95, abs=0.01)  # floor + 0.9 * P(best) ~ 0.95


def test_three_arms_best_wins_and_floor_holds() -> None:
    alloc = ThompsonAllocator(["a", "b", "c"], floor=0.1, seed=3)
    alloc.observe("a", 3000, 190)  # 0.063
    alloc.observe("b", 3000, 285)  # 0.095
    alloc.observe("c", 3000, 120)  # 0.040
    shares = alloc.shares()
    assert shares["b"] > 0.75  # at most 1 - 2 * 0.1 = 0.8
    assert min(shares.values()) >= 0.1 - 1e-12
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("floor", [0.0, 0.01, 0.05, 0.1, 0.2, 1 / 3])
def test_floor_respected_and_shares_sum_to_one(floor: float) -> None:
    rng = np.random.default_rng(11)
    alloc = ThompsonAllocator(["a", "b", "c"], floor=floor, draws=500, seed=5)
    for _ in range(30):
        for arm, rate in zip(alloc.arms, (0.02, 0.05, 0.3), strict=True):
            clicks = int(rng.integers(0, 200))
            alloc.observe(arm, clicks, int(rng.binomial(clicks, rate)))
        shares = alloc.shares()
        assert list(shares) == ["a", "b", "c"]
        assert min(shares.values()) >= floor - 1e-12
        assert max(shares.values()) <= 1.0 - 2 * floor + 1e-12
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)


def test_floor_at_one_over_k_is_a_fixed_even_split() -> None:
    alloc = ThompsonAllocator(["a", "b"], floor=0.5, seed=1)
    alloc.observe("a", 10_000, 5_000)
    alloc.observe("b", 10_000, 10)
    assert alloc.shares() == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}


@pytest.mark.parametrize(
    ("arms", "floor"), [(["a", "b"], 0.51), (["a", "b", "c"], 0.34), (["a"], -0.01)]
)
def test_floor_out_of_range_is_refused(arms: list[str], floor: float) -> None:
    with pytest.raises(ValueError, match=r"floor must be in \[0, 1/k\]"):
        ThompsonAllocator(arms, floor=floor)


def test_floor_nan_and_bad_draws_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        ThompsonAllocator(["a", "b"], floor=float("nan"))
    with pytest.raises(ValueError, match="draws"):
        ThompsonAllocator(["a", "b"], floor=0.1, draws=0)


def test_one_arm_takes_everything() -> None:
    alloc = ThompsonAllocator(["only"], floor=0.2, seed=1)
    alloc.observe("only", 10, 1)
    assert alloc.shares() == {"only": pytest.approx(1.0)}


@pytest.mark.parametrize("arms", [[], ["a", "a"], ["a", ""]], ids=["none", "repeated", "empty"])
def test_bad_arm_names_are_refused(arms: list[str]) -> None:
    with pytest.raises(ValueError, match="arm"):
        ThompsonAllocator(arms, floor=0.0)


def test_probabilities_are_monte_carlo_fractions_and_seeded() -> None:
    def run(seed: int) -> dict[str, float]:
        alloc = ThompsonAllocator(["a", "b"], floor=0.0, draws=1000, seed=seed)
        alloc.observe("a", 100, 9)
        alloc.observe("b", 100, 7)
        return alloc.probabilities()

    first = run(42)
    assert first == run(42)  # same seed, same estimate
    assert all(abs(v * 1000 - round(v * 1000)) < 1e-9 for v in first.values())
    assert sum(first.values()) == pytest.approx(1.0)
    assert 0.5 < first["a"] < 0.85  # a is probably but not surely better


def test_shares_order_does_not_depend_on_argument_order() -> None:
    a = ThompsonAllocator(["zeta", "alpha"], floor=0.1, seed=9)
    b = ThompsonAllocator(["alpha", "zeta"], floor=0.1, seed=9)
    for alloc in (a, b):
        alloc.observe("alpha", 400, 40)
        alloc.observe("zeta", 400, 30)
    assert a.arms == ("alpha", "zeta")
    assert a.shares() == b.shares()


def test_observe_validates() -> None:
    alloc = ThompsonAllocator(["a", "b"], floor=0.1)
    with pytest.raises(KeyError, match="unknown arm 'c'"):
        alloc.observe("c", 1, 0)
    with pytest.raises(ValueError, match="hits <= clicks"):
        alloc.observe("a", 1, 2)
    with pytest.raises(TypeError):
        alloc.observe("a", 1.0, 0)  # type: ignore[arg-type]
    assert alloc.stats() == {"a": ArmStats(), "b": ArmStats()}


# -- state --------------------------------------------------------------------------------


def test_state_round_trip_through_json() -> None:
    alloc = ThompsonAllocator(["ranker", "blend"], floor=0.05, seed=1)
    alloc.observe("ranker", 1234, 117)
    alloc.observe("blend", 987, 58)
    state = json.loads(json.dumps(alloc.to_state()))
    assert state == {
        "version": STATE_VERSION,
        "kind": "thompson",
        "arms": {"blend": {"clicks": 987, "hits": 58}, "ranker": {"clicks": 1234, "hits": 117}},
    }
    restored = ThompsonAllocator(["blend", "ranker"], floor=0.05, seed=1)
    restored.from_state(state)
    assert restored.stats() == alloc.stats()
    fresh = ThompsonAllocator(["ranker", "blend"], floor=0.05, seed=1)
    fresh.from_state(state)
    assert restored.shares() == fresh.shares()  # same evidence, same seed, same shares
    restored.observe("blend", 13, 2)  # evidence keeps accumulating after a restore
    assert restored.stats()["blend"] == ArmStats(1000, 60)


def test_state_for_other_arms_is_rejected_by_default() -> None:
    old = ThompsonAllocator(["a", "b"], floor=0.1)
    old.observe("a", 10, 1)
    new = ThompsonAllocator(["a", "c"], floor=0.1)
    with pytest.raises(
        StateMismatchError, match=r"only in the state \['b'\], only in the config \['c'\]"
    ):
        new.from_state(old.to_state())
    assert new.stats() == {"a": ArmStats(), "c": ArmStats()}  # untouched


def test_state_for_other_arms_can_be_mapped() -> None:
    old = ThompsonAllocator(["a", "b"], floor=0.1)
    old.observe("a", 10, 1)
    old.observe("b", 20, 2)
    new = ThompsonAllocator(["a", "c"], floor=0.1)
    new.from_state(old.to_state(), on_mismatch="map")
    assert new.stats() == {"a": ArmStats(10, 1), "c": ArmStats()}


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"version": 99, "kind": "thompson", "arms": {}}, "version 99"),
        ({"kind": "thompson", "arms": {}}, "version None"),
        ({"version": STATE_VERSION, "kind": "fixed", "arms": {}}, "'fixed' allocator"),
        ({"version": STATE_VERSION, "kind": "thompson"}, "no 'arms'"),
        (
            {
                "version": STATE_VERSION,
                "kind": "thompson",
                "arms": {"a": {"clicks": 1, "hits": 2}, "b": {"clicks": 0, "hits": 0}},
            },
            "arm 'a'",
        ),
        (
            {
                "version": STATE_VERSION,
                "kind": "thompson",
                "arms": {"a": {"clicks": 1}, "b": {"clicks": 0, "hits": 0}},
            },
            "arm 'a'",
        ),
        (
            {
                "version": STATE_VERSION,
                "kind": "thompson",
                "arms": {"a": {"clicks": "1", "hits": 0}, "b": {"clicks": 0, "hits": 0}},
            },
            "arm 'a'",
        ),
        ([1, 2], "must be a mapping"),
    ],
    ids=["version", "no-version", "kind", "no-arms", "hits>clicks", "missing", "string", "list"],
)
def test_bad_state_is_refused(state: object, message: str) -> None:
    alloc = ThompsonAllocator(["a", "b"], floor=0.1)
    with pytest.raises(StateMismatchError, match=message):
        alloc.from_state(state)  # type: ignore[arg-type]


def test_bad_on_mismatch_is_refused() -> None:
    alloc = ThompsonAllocator(["a", "b"], floor=0.1)
    with pytest.raises(ValueError, match="on_mismatch"):
        alloc.from_state(alloc.to_state(), on_mismatch="ignore")  # type: ignore[arg-type]


# -- FixedAllocator -----------------------------------------------------------------------


def test_fixed_allocator_keeps_its_split_and_evidence() -> None:
    alloc: Allocator = FixedAllocator({"b": 0.7, "a": 0.3})
    alloc.observe("a", 100, 1)
    alloc.observe("b", 100, 50)
    assert alloc.shares() == {"a": 0.3, "b": 0.7}
    assert list(alloc.shares()) == ["a", "b"]
    state = json.loads(json.dumps(alloc.to_state()))
    assert state["kind"] == "fixed"
    again = FixedAllocator({"a": 0.3, "b": 0.7})
    again.from_state(state)
    assert again.stats() == alloc.stats()
    with pytest.raises(StateMismatchError, match="'fixed' allocator"):
        ThompsonAllocator(["a", "b"], floor=0.1).from_state(state)


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ({"a": 0.5, "b": 0.4}, "sum to 1"),
        ({"a": 1.2, "b": -0.2}, ">= 0"),
        ({"a": float("nan"), "b": 1.0}, "finite"),
        ({}, "at least one arm"),
    ],
)
def test_fixed_allocator_validates_shares(shares: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FixedAllocator(shares)


# -- assign -------------------------------------------------------------------------------


def test_assign_covers_the_unit_interval_exactly() -> None:
    shares = {"c": 0.5, "a": 0.2, "b": 0.3}
    grid = [i / 10_000 for i in range(10_000)]
    counts = {a: 0 for a in shares}
    for pos in grid:
        counts[assign(pos, shares)] += 1
    assert counts == {"a": 2000, "b": 3000, "c": 5000}


def test_assign_intervals_are_half_open_in_sorted_order() -> None:
    shares = {"b": 0.5, "a": 0.25, "c": 0.25}  # a: [0, .25), b: [.25, .75), c: [.75, 1)
    assert assign(0.0, shares) == "a"
    assert assign(0.25, shares) == "b"  # a boundary belongs to the next arm
    assert assign(np.nextafter(0.25, 0.0), shares) == "a"
    assert assign(0.75, shares) == "c"
    assert assign(np.nextafter(1.0, 0.0), shares) == "c"
    assert arm_bounds(shares) == (("a", "b", "c"), (0.25, 0.75, 1.0))


def test_assign_never_picks_a_zero_share_arm() -> None:
    shares = {"a": 0.5, "b": 0.0, "c": 0.5, "d": 0.0}
    picked = {assign(i / 1000, shares) for i in range(1000)}
    assert picked == {"a", "c"}
    assert assign(0.5, shares) == "c"
    assert assign(np.nextafter(1.0, 0.0), shares) == "c"  # not d
    assert assign(0.0, {"a": 0.0, "b": 1.0}) == "b"


def test_assign_leftover_from_rounding_goes_to_last_positive_arm() -> None:
    shares = {"a": 0.5, "b": 0.5 - 1e-9, "c": 0.0}  # sums to 1 within tolerance
    assert assign(1.0 - 1e-10, shares) == "b"
    assert assign_indices([1.0 - 1e-10], shares).tolist() == [1]


def test_assign_single_arm() -> None:
    assert assign(0.0, {"only": 1.0}) == "only"
    assert assign(0.999, {"only": 1.0}) == "only"


@pytest.mark.parametrize("position", [1.0, -0.1, float("nan"), 2.0])
def test_assign_rejects_positions_outside_unit_interval(position: float) -> None:
    with pytest.raises(ValueError, match=r"position must be in \[0, 1\)"):
        assign(position, {"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match=r"positions must all be in \[0, 1\)"):
        assign_indices([0.1, position], {"a": 0.5, "b": 0.5})


def test_assign_rejects_bad_shares() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        assign(0.1, {"a": 0.5, "b": 0.6})


def test_assign_indices_agrees_with_assign() -> None:
    shares = {"b": 0.3, "a": 0.2, "c": 0.0, "d": 0.5}
    arms = sorted(shares)
    rng = np.random.default_rng(0)
    positions = np.concatenate([rng.random(2000), [0.0, 0.2, 0.5, np.nextafter(1.0, 0.0)]])
    idx = assign_indices(positions, shares)
    assert [arms[i] for i in idx] == [assign(float(p), shares) for p in positions]
    assert assign_indices(np.array([]), shares).shape == (0,)


def test_small_share_change_moves_only_users_between_the_boundaries() -> None:
    grid = [i / 10_000 for i in range(10_000)]
    before = [assign(p, {"a": 0.5, "b": 0.5}) for p in grid]
    after = [assign(p, {"a": 0.6, "b": 0.4}) for p in grid]
    moved = [p for p, x, y in zip(grid, before, after, strict=True) if x != y]
    assert len(moved) == 1000
    assert min(moved) == 0.5 and max(moved) < 0.6


def test_thompson_shares_feed_assign() -> None:
    alloc = ThompsonAllocator(["ranker", "blend"], floor=0.1, seed=2)
    alloc.observe("ranker", 5000, 475)
    alloc.observe("blend", 5000, 295)
    shares = alloc.shares()
    picked = [assign(i / 1000, shares) for i in range(1000)]
    assert picked.count("ranker") / 1000 == pytest.approx(shares["ranker"], abs=1e-3)
