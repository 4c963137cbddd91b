"""Traffic allocation over A/B arms: a fixed split, or Thompson sampling on online hit rates.

An arm's evidence is ``ArmStats``: the clicks made by its users and the online
hits among them (the clicked item was in the user's latest list). Both
allocators have one interface (``Allocator``): ``observe`` adds evidence,
``shares`` gives every arm's traffic share (summing to 1), ``to_state`` /
``from_state`` carry the evidence across restarts as JSON-able dicts.

``ThompsonAllocator`` gives each arm the posterior probability that it has the
highest hit rate, under independent Beta(hits + 1, misses + 1) posteriors
(uniform priors), estimated from ``draws`` joint samples; then mixes in a floor
so every arm keeps learning: ``share = floor + (1 - k * floor) * P(best)``.

``assign(position, shares)`` maps a position in [0, 1) (a salted hash of the
user id) to the arm whose cumulative share interval holds it, arms in sorted
name order, so a user keeps their arm while the shares hold still, and a share
moving by d moves about d of the users (for two arms, exactly those between
the old and new boundary).

State and arm sets: ``from_state`` rejects state saved for a different set of
arms by default (``StateMismatchError`` names the arms only in the state and
only in the allocator). With ``on_mismatch="map"`` it keeps the arms both know,
starts new arms at zero and drops arms no longer configured: that suits adding
an arm to a running experiment, but an arm that kept its name while its config
changed keeps evidence about the old config either way.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "STATE_VERSION",
    "Allocator",
    "ArmStats",
    "FixedAllocator",
    "StateMismatchError",
    "ThompsonAllocator",
    "arm_bounds",
    "assign",
    "assign_indices",
]

#: version of the dict ``to_state`` writes; ``from_state`` refuses any other
STATE_VERSION = 1

#: how far from 1 a set of shares may sum (float rounding of config values)
SHARE_TOLERANCE = 1e-6


class StateMismatchError(ValueError):
    """Saved allocator state does not match the allocator (arms, kind or version)."""


@dataclass(frozen=True)
class ArmStats:
    """One arm's evidence: clicks by its users and the online hits among them."""

    clicks: int = 0
    hits: int = 0

    def __post_init__(self) -> None:
        _check_counts(self.clicks, self.hits, "ArmStats")

    @property
    def misses(self) -> int:
        """Clicks that were not hits."""
        return self.clicks - self.hits

    @property
    def hit_rate(self) -> float:
        """hits / clicks; 0.0 with no clicks."""
        return self.hits / self.clicks if self.clicks else 0.0

    def add(self, clicks: int, hits: int) -> ArmStats:
        """These stats plus ``clicks`` and ``hits`` more."""
        _check_counts(clicks, hits, "observe")
        return ArmStats(self.clicks + clicks, self.hits + hits)


class Allocator(Protocol):
    """What the scorer needs from an allocation policy."""

    @property
    def arms(self) -> tuple[str, ...]: ...

    def observe(self, arm: str, clicks: int, hits: int) -> None: ...

    def shares(self) -> dict[str, float]: ...

    def stats(self) -> dict[str, ArmStats]: ...

    def to_state(self) -> dict[str, Any]: ...

    def from_state(
        self, state: Mapping[str, Any], on_mismatch: Literal["reject", "map"] = "reject"
    ) -> None: ...


def _check_counts(clicks: int, hits: int, what: str) -> None:
    """Raise unless clicks and hits are ints with 0 <= hits <= clicks."""
    for name, value in (("clicks", clicks), ("hits", hits)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{what}: {name} must be an int, got {value!r}")
    if clicks < 0 or hits < 0 or hits > clicks:
        raise ValueError(f"{what}: need 0 <= hits <= clicks, got clicks={clicks}, hits={hits}")


def _check_arms(arms: Sequence[str]) -> tuple[str, ...]:
    """The arms sorted by name; raise on none, duplicates or non-strings."""
    if isinstance(arms, str):
        raise TypeError("arms must be a sequence of names, not one string")
    names = list(arms)
    if not names:
        raise ValueError("need at least one arm")
    bad = [a for a in names if not isinstance(a, str) or not a]
    if bad:
        raise ValueError(f"arm names must be non-empty strings, got {bad!r}")
    dupes = sorted({a for a in names if names.count(a) > 1})
    if dupes:
        raise ValueError(f"arm names must be unique, repeated: {dupes}")
    return tuple(sorted(names))


class _Evidence:
    """Per-arm stats behind a lock, with the shared state format (both allocators)."""

    kind: str = ""

    def __init__(self, arms: Sequence[str]) -> None:
        self._arms = _check_arms(arms)
        self._stats = {a: ArmStats() for a in self._arms}
        self._lock = threading.Lock()

    @property
    def arms(self) -> tuple[str, ...]:
        """Arm names in sorted order."""
        return self._arms

    def observe(self, arm: str, clicks: int, hits: int) -> None:
        """Add ``clicks`` clicks by ``arm``'s users, ``hits`` of them online hits."""
        if arm not in self._stats:
            raise KeyError(f"unknown arm {arm!r}; arms: {list(self._arms)}")
        with self._lock:
            self._stats[arm] = self._stats[arm].add(clicks, hits)

    def stats(self) -> dict[str, ArmStats]:
        """A snapshot of every arm's evidence."""
        with self._lock:
            return dict(self._stats)

    def to_state(self) -> dict[str, Any]:
        """JSON-able evidence: ``{"version", "kind", "arms": {name: {"clicks", "hits"}}}``."""
        snap = self.stats()
        return {
            "version": STATE_VERSION,
            "kind": self.kind,
            "arms": {a: {"clicks": s.clicks, "hits": s.hits} for a, s in snap.items()},
        }

    def from_state(
        self, state: Mapping[str, Any], on_mismatch: Literal["reject", "map"] = "reject"
    ) -> None:
        """Replace the evidence with ``state`` (from ``to_state``); see the module doc on arms."""
        if on_mismatch not in ("reject", "map"):
            raise ValueError(f"on_mismatch must be 'reject' or 'map', got {on_mismatch!r}")
        loaded = _parse_state(state, self.kind)
        known = set(self._arms)
        saved = set(loaded)
        if saved != known and on_mismatch == "reject":
            raise StateMismatchError(_mismatch_message(saved, known))
        fresh = {a: loaded.get(a, ArmStats()) for a in self._arms}
        with self._lock:
            self._stats = fresh


def _parse_state(state: Mapping[str, Any], kind: str) -> dict[str, ArmStats]:
    """Validate a saved state dict and return its per-arm stats."""
    if not isinstance(state, Mapping):
        raise StateMismatchError(f"allocator state must be a mapping, got {type(state).__name__}")
    version = state.get("version")
    if version != STATE_VERSION:
        raise StateMismatchError(
            f"allocator state version {version!r} is not supported (expected {STATE_VERSION})"
        )
    if state.get("kind") != kind:
        raise StateMismatchError(
            f"allocator state is for a {state.get('kind')!r} allocator, not {kind!r}"
        )
    arms = state.get("arms")
    if not isinstance(arms, Mapping):
        raise StateMismatchError("allocator state has no 'arms' mapping")
    out: dict[str, ArmStats] = {}
    for name, counts in arms.items():
        if not isinstance(counts, Mapping):
            raise StateMismatchError(f"allocator state: arm {name!r} is not a mapping")
        try:
            out[str(name)] = ArmStats(counts["clicks"], counts["hits"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateMismatchError(f"allocator state: arm {name!r}: {exc!s}") from exc
    return out


def _mismatch_message(saved: set[str], known: set[str]) -> str:
    only_saved = sorted(saved - known)
    only_known = sorted(known - saved)
    return (
        "allocator state was saved for other arms: "
        f"only in the state {only_saved}, only in the config {only_known}; "
        "load it with on_mismatch='map' to keep the shared arms and start new ones "
        "at zero, or delete the state to start over"
    )


class FixedAllocator(_Evidence):
    """A fixed split: ``shares`` as given (validated); evidence is kept for reports."""

    kind = "fixed"

    def __init__(self, shares: Mapping[str, float]) -> None:
        super().__init__(list(shares))
        self._shares = _check_shares(shares)

    def shares(self) -> dict[str, float]:
        """The configured shares, in sorted arm order."""
        return dict(self._shares)


class ThompsonAllocator(_Evidence):
    """Thompson sampling over per-arm hit rates, with a floor share per arm.

    ``draws`` joint posterior samples estimate P(arm is best); ``seed`` makes a
    sequence of ``shares()`` calls reproducible (each call draws fresh samples).
    """

    kind = "thompson"

    def __init__(
        self, arms: Sequence[str], floor: float, draws: int = 4000, seed: int | None = None
    ) -> None:
        super().__init__(arms)
        k = len(self._arms)
        if not (isinstance(floor, int | float) and math.isfinite(floor)) or not (
            0.0 <= floor <= 1.0 / k + 1e-12
        ):
            raise ValueError(
                f"floor must be in [0, 1/k] = [0, {1.0 / k:.6g}] for k={k} arms, got {floor!r} "
                "(k floors must fit in the whole traffic)"
            )
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive int, got {draws!r}")
        self._floor = min(float(floor), 1.0 / k)
        self._draws = draws
        self._rng = np.random.default_rng(seed)

    @property
    def floor(self) -> float:
        """The least share any arm gets."""
        return self._floor

    def probabilities(self) -> dict[str, float]:
        """P(arm has the highest hit rate) under the Beta posteriors, before the floor."""
        snap = self.stats()
        counts = [snap[a] for a in self._arms]
        if len(set(counts)) == 1:
            # identical evidence: exactly 1/k by symmetry, not Monte Carlo noise
            return {a: 1.0 / len(self._arms) for a in self._arms}
        alpha = np.array([s.hits + 1 for s in counts], dtype=np.float64)
        beta = np.array([s.misses + 1 for s in counts], dtype=np.float64)
        with self._lock:  # the generator is not thread-safe
            samples = self._rng.beta(alpha, beta, size=(self._draws, len(counts)))
        wins = np.bincount(np.argmax(samples, axis=1), minlength=len(counts))
        return {a: float(w) / self._draws for a, w in zip(self._arms, wins, strict=True)}

    def shares(self) -> dict[str, float]:
        """Traffic shares: ``floor + (1 - k * floor) * P(best)``; at least ``floor``, sum 1."""
        probs = self.probabilities()
        k = len(self._arms)
        scale = 1.0 - k * self._floor
        return {a: self._floor + scale * p for a, p in probs.items()}


def _check_shares(shares: Mapping[str, float]) -> dict[str, float]:
    """Shares by sorted arm name; raise unless non-negative, finite and summing to 1."""
    _check_arms(list(shares))
    out: dict[str, float] = {}
    for arm in sorted(shares):
        value = shares[arm]
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise TypeError(f"share of arm {arm!r} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"share of arm {arm!r} must be finite and >= 0, got {value!r}")
        out[arm] = float(value)
    total = math.fsum(out.values())
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"shares must sum to 1, got {total!r}: {out}")
    return out


def arm_bounds(shares: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Arms in sorted name order and the upper end of each one's cumulative interval.

    Arm i owns positions in ``[bounds[i-1], bounds[i])`` (``bounds[-1]`` is 0 for i=0).
    """
    checked = _check_shares(shares)
    arms = tuple(checked)
    bounds: list[float] = []
    acc = 0.0
    for arm in arms:
        acc += checked[arm]
        bounds.append(acc)
    return arms, tuple(bounds)


def _last_positive(arms: tuple[str, ...], shares: Mapping[str, float]) -> int:
    """Index of the last arm with a positive share (takes positions rounding leaves over)."""
    return max(i for i, a in enumerate(arms) if shares[a] > 0)


def _check_position(position: float) -> None:
    if not (isinstance(position, int | float) and 0.0 <= position < 1.0):
        raise ValueError(f"position must be in [0, 1), got {position!r}")


def assign(position: float, shares: Mapping[str, float]) -> str:
    """The arm whose cumulative share interval holds ``position`` (arms in sorted name order).

    An arm with share 0 owns no positions; a position past the last bound (the
    shares sum to 1 only within rounding) goes to the last arm with a positive share.
    """
    _check_position(position)
    arms, bounds = arm_bounds(shares)
    for arm, upper in zip(arms, bounds, strict=True):
        if position < upper:
            return arm
    return arms[_last_positive(arms, shares)]


def assign_indices(positions: npt.ArrayLike, shares: Mapping[str, float]) -> npt.NDArray[np.intp]:
    """``assign`` for many positions at once, as indices into ``sorted(shares)``."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.size and not (np.all(pos >= 0.0) and np.all(pos < 1.0)):
        raise ValueError("positions must all be in [0, 1)")
    arms, bounds = arm_bounds(shares)
    idx = np.searchsorted(np.asarray(bounds), pos, side="right")
    return np.where(idx >= len(arms), _last_positive(arms, shares), idx).astype(np.intp)
