"""RecentRecords: a bounded list of the newest records of one kind, with counts and listeners.

Refused authentications, policy decisions, guardrail findings and limit refusals are all kept
this way for operators (the admin API shows the newest) until the audit trail takes them: the
listeners are where it hooks in. Bounded, so a flood of refusals costs fixed memory.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RecentRecords"]

T = TypeVar("T")


class RecentRecords(Generic[T]):
    """The newest `capacity` records, counts by a label, and listeners called with every record."""

    def __init__(self, capacity: int = 1000, *, counts: Counter[str] | None = None) -> None:
        self._items: deque[T] = deque(maxlen=capacity)
        # Several lists may share one counter (decisions and guardrail findings, say).
        self.counts: Counter[str] = counts if counts is not None else Counter()
        self._listeners: list[Callable[[T], None]] = []

    def subscribe(self, listener: Callable[[T], None]) -> None:
        """Call `listener` with every record from now on."""
        self._listeners.append(listener)

    def add(self, record: T, label: str) -> None:
        """Keep `record`, count it under `label`, tell the listeners."""
        self._items.append(record)
        self.counts[label] += 1
        for listener in self._listeners:
            listener(record)

    def recent(self, limit: int = 100) -> list[T]:
        """The newest records, newest first."""
        return list(reversed(self._items))[:limit]
