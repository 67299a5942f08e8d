"""A bounded record of failed authentications, for operators now and the audit trail later.

Every refusal at the front door is kept here (reason, endpoint, source address, a short
fingerprint of the presented token — never the token), in a ring of recent records with
per-reason counters. Log lines are rate-limited per (reason, source) so a flood of bad tokens
cannot flood the logs; the counters still count every one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tollhouse.records import RecentRecords

__all__ = ["AuthFailure", "AuthFailureLog", "token_fingerprint"]

logger = logging.getLogger("tollhouse.auth")


def token_fingerprint(token: str | None) -> str | None:
    """A short, non-reversible label for a presented token (to correlate, never to replay)."""
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class AuthFailure:
    """One refused authentication."""

    at: float
    reason: str
    path: str
    source: str | None
    token_fingerprint: str | None
    status: int

    def to_json(self) -> dict[str, Any]:
        """As a JSON object."""
        return asdict(self)


class AuthFailureLog:
    """Recent failures (bounded) and counts by reason; listeners get every record."""

    def __init__(
        self,
        *,
        capacity: int = 1000,
        log_interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._records: RecentRecords[AuthFailure] = RecentRecords(capacity)
        self.counts = self._records.counts
        self._clock = clock
        self._log_interval = log_interval_seconds
        self._last_logged: dict[tuple[str, str | None], float] = {}

    def subscribe(self, listener: Callable[[AuthFailure], None]) -> None:
        """Call `listener` with every failure (the audit trail hooks in here)."""
        self._records.subscribe(listener)

    def record(self, *, reason: str, path: str, source: str | None, token: str | None, status: int) -> None:
        """Record one refusal."""
        now = self._clock()
        self._records.add(AuthFailure(now, reason, path, source, token_fingerprint(token), status), reason)
        key = (reason, source)
        if now - self._last_logged.get(key, 0.0) >= self._log_interval:
            if len(self._last_logged) > 10_000:
                self._last_logged.clear()
            self._last_logged[key] = now
            logger.warning("authentication refused: %s at %s from %s (%d)", reason, path, source, status)

    def recent(self, limit: int = 100) -> list[AuthFailure]:
        """The newest failures, newest first."""
        return self._records.recent(limit)
