"""The pull API's guards, pure: a per-client token bucket and the bearer-token check."""

from __future__ import annotations

import hmac
import math


class RateLimiter:
    """A token bucket per client key (the client's IP): ``rate`` tokens a second up to
    ``burst``; a request takes one. ``rate`` 0 admits everything.

    Idle clients are forgotten once ``max_clients`` are tracked (a full bucket and a
    forgotten one behave the same), so memory stays bounded.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float) -> float:
        """0.0 when ``key`` may make a request at ``now`` (a token is taken), else the
        seconds until it may."""
        if self.rate <= 0:
            return 0.0
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(now - at, 0.0) * self.rate)
        if tokens >= 1.0:
            if key not in self._buckets and len(self._buckets) >= self.max_clients:
                self._forget_full(now)
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop every client whose bucket has refilled (it would be full anyway)."""
        refill_s = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill_s}


def retry_after(wait_s: float) -> str:
    """The Retry-After header for a wait: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether ``header`` is ``Bearer <token>``, compared in constant time."""
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").encode(), expected)
