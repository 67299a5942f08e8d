"""Throttling for the authorization server: token buckets per key and a sign-in lockout.

Both live in the memory of one replica, on an injected clock. They guard what a client can
make the server spend (argon2 hashes, database writes, outbound CIMD fetches) and slow down
password guessing; fleet-wide quotas are the policy engine's job, not this module's. Keys are
bounded (least recently used dropped first), so a flood of source addresses cannot grow them
without limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Buckets", "Lockout", "Rate", "ThrottleSettings"]

Clock = Callable[[], float]
_MAX_KEYS = 10_000


@dataclass(frozen=True)
class Rate:
    """`capacity` requests at once, refilled at `capacity` per `per_seconds`."""

    capacity: int
    per_seconds: float


@dataclass(frozen=True)
class ThrottleSettings:
    """Limits per source address (and per user name for sign-in failures)."""

    token: Rate = Rate(60, 60.0)
    token_failures: Rate = Rate(10, 60.0)  # failed client authentication at /oauth/token
    authorize: Rate = Rate(60, 60.0)
    login: Rate = Rate(20, 60.0)
    register: Rate = Rate(10, 60.0)
    revoke: Rate = Rate(60, 60.0)
    lockout_threshold_user: int = 5
    lockout_threshold_address: int = 20
    lockout_base_seconds: float = 2.0
    lockout_max_seconds: float = 900.0


@dataclass
class Buckets:
    """Token buckets by key."""

    rate: Rate
    clock: Clock = time.monotonic
    max_keys: int = _MAX_KEYS
    _state: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def take(self, key: str) -> float:
        """Spend one token for `key`: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        refill = self.rate.capacity / self.rate.per_seconds
        tokens, last = self._state.get(key, (float(self.rate.capacity), now))
        tokens = min(float(self.rate.capacity), tokens + (now - last) * refill)
        if tokens < 1.0:
            self._remember(key, tokens, now)
            return (1.0 - tokens) / refill
        self._remember(key, tokens - 1.0, now)
        return 0.0

    def exhausted(self, key: str) -> float:
        """Seconds until `key` has a token again (0.0 if it has one), without spending any."""
        if key not in self._state:
            return 0.0
        tokens, last = self._state[key]
        refill = self.rate.capacity / self.rate.per_seconds
        tokens = min(float(self.rate.capacity), tokens + (self.clock() - last) * refill)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / refill

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._state[key] = (tokens, now)
        self._state.move_to_end(key)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)


@dataclass
class _Failures:
    count: int
    locked_until: float
    last: float


@dataclass
class Lockout:
    """Failed sign-ins per key; past a threshold each further failure locks the key for twice as long."""

    threshold: int
    base_seconds: float
    max_seconds: float
    clock: Clock = time.monotonic
    forget_after_seconds: float = 3600.0
    max_keys: int = _MAX_KEYS
    _state: OrderedDict[str, _Failures] = field(default_factory=OrderedDict)

    def retry_after(self, key: str) -> float:
        """Seconds `key` stays locked (0.0 when it may try)."""
        entry = self._state.get(key)
        if entry is None:
            return 0.0
        now = self.clock()
        if now - entry.last > self.forget_after_seconds:
            del self._state[key]
            return 0.0
        return max(0.0, entry.locked_until - now)

    def failure(self, key: str) -> None:
        """Count a failure; lock the key once it reached the threshold."""
        now = self.clock()
        entry = self._state.get(key)
        if entry is None or now - entry.last > self.forget_after_seconds:
            entry = _Failures(0, 0.0, now)
        entry.count += 1
        entry.last = now
        if entry.count >= self.threshold:
            excess = entry.count - self.threshold
            entry.locked_until = now + min(self.max_seconds, self.base_seconds * 2.0 ** min(excess, 30))
        self._state[key] = entry
        self._state.move_to_end(key)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)

    def success(self, key: str) -> None:
        """Forget the failures of `key`."""
        self._state.pop(key, None)
