"""PinStore: tool pins in the registry's database (table `tool_pins`), next to the catalogs.

A sync folds the new catalog into the stored pins inside one write transaction, reading
the pins there rather than from a cache, so an approval written by another replica is never
overwritten by a replica that had not seen it yet. Reads are off the request path: the
pool turns pins into the snapshot, and requests are served from the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.registry.pins import Pin, PinKey, PinKind, Reconciled
from tollhouse.registry.tables import TOOL_PINS, ToolPinRow, UpstreamRow, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["Decision", "MemoryPinStore", "PinConflictError", "PinStore", "SqlPinStore"]

T = TypeVar("T")
Clock = Callable[[], datetime]
Decision = Literal["approve", "reject"]
Fold = Callable[[Mapping[PinKey, Pin]], Reconciled]


class PinConflictError(Exception):
    """The pin's latest definition is not the one the decision was about."""

    def __init__(self, current: Pin) -> None:
        super().__init__(f"the definition changed meanwhile (now {current.sha256})")
        self.current = current


class PinStore(Protocol):
    """Persistence of pins."""

    async def fold(self, server: str, fold: Fold) -> dict[PinKey, Pin] | None:
        """Apply `fold` to the server's stored pins and write what it changed, in one transaction.

        Returns every pin of the server afterwards, or None when the server is not registered.
        """
        ...

    async def load(self, server: str | None = None) -> dict[str, dict[PinKey, Pin]]:
        """Every pin by server (or only `server`'s)."""
        ...

    async def get(self, server: str, kind: PinKind, name: str) -> Pin | None:
        """One pin, or None."""
        ...

    async def decide(
        self, server: str, kind: PinKind, name: str, decision: Decision, by: str, sha256: str | None = None
    ) -> Pin | None:
        """Approve or reject the pin's latest definition as `by`; None if there is no such pin.

        Raises:
            PinConflictError: `sha256` is given and is not the latest definition's.
        """
        ...

    async def forget(self, server: str) -> None:
        """Drop every pin of a server that is being removed (registering it again starts afresh)."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SqlPinStore(TransactionalStore):
    """PinStore over the registry's SQLAlchemy engine; each call is one transaction in a worker thread."""

    async def fold(self, server: str, fold: Fold) -> dict[PinKey, Pin] | None:
        """Apply `fold` to the server's stored pins and write what it changed, in one transaction."""

        def work(session: Session) -> dict[PinKey, Pin] | None:
            # Locking the upstream row serialises syncs and decisions of one server's pins.
            if session.get(UpstreamRow, server, with_for_update=True) is None:
                return None
            rows = session.scalars(sa.select(ToolPinRow).where(TOOL_PINS.c.server == server))
            result = fold({(p.kind, p.name): p for p in (row.to_pin() for row in rows)})
            for pin in result.changed:
                session.merge(ToolPinRow.of(pin))
            return result.pins

        return await self._run(work, write=True)

    async def load(self, server: str | None = None) -> dict[str, dict[PinKey, Pin]]:
        """Every pin by server (or only `server`'s)."""

        def work(session: Session) -> dict[str, dict[PinKey, Pin]]:
            query = sa.select(ToolPinRow).order_by(TOOL_PINS.c.server, TOOL_PINS.c.kind, TOOL_PINS.c.name)
            if server is not None:
                query = query.where(TOOL_PINS.c.server == server)
            out: dict[str, dict[PinKey, Pin]] = {}
            for row in session.scalars(query):
                pin = row.to_pin()
                out.setdefault(pin.server, {})[pin.key] = pin
            return out

        return await self._run(work)

    async def get(self, server: str, kind: PinKind, name: str) -> Pin | None:
        """One pin, or None."""

        def work(session: Session) -> Pin | None:
            row = session.get(ToolPinRow, (server, kind, name))
            return None if row is None else row.to_pin()

        return await self._run(work)

    async def decide(
        self, server: str, kind: PinKind, name: str, decision: Decision, by: str, sha256: str | None = None
    ) -> Pin | None:
        """Approve or reject the pin's latest definition as `by`; None if there is no such pin.

        Raises:
            PinConflictError: `sha256` is given and is not the latest definition's.
        """

        def work(session: Session) -> Pin | None:
            if session.get(UpstreamRow, server, with_for_update=True) is None:
                return None
            row = session.get(ToolPinRow, (server, kind, name))
            if row is None:
                return None
            pin = row.to_pin()
            if sha256 is not None and sha256 != pin.sha256:
                raise PinConflictError(pin)
            now = utc(self._clock())
            decided = pin.approve(by, now) if decision == "approve" else pin.reject(by, now)
            session.merge(ToolPinRow.of(decided))
            return decided

        return await self._run(work, write=True)

    async def forget(self, server: str) -> None:
        """Drop every pin of a server that is being removed."""

        def work(session: Session) -> None:
            session.execute(sa.delete(ToolPinRow).where(TOOL_PINS.c.server == server))

        await self._run(work, write=True)


class MemoryPinStore:
    """PinStore in memory, for a pool built without a database (pins last as long as the process)."""

    def __init__(self, *, clock: Clock = _utcnow) -> None:
        self._clock = clock
        self._pins: dict[str, dict[PinKey, Pin]] = {}

    async def fold(self, server: str, fold: Fold) -> dict[PinKey, Pin] | None:
        """Apply `fold` to the server's pins and keep what it changed."""
        result = fold(dict(self._pins.get(server, {})))
        pins = self._pins.setdefault(server, {})
        for pin in result.changed:
            pins[pin.key] = pin
        return dict(result.pins)

    async def load(self, server: str | None = None) -> dict[str, dict[PinKey, Pin]]:
        """Every pin by server (or only `server`'s)."""
        return {s: dict(p) for s, p in self._pins.items() if server is None or s == server}

    async def get(self, server: str, kind: PinKind, name: str) -> Pin | None:
        """One pin, or None."""
        return self._pins.get(server, {}).get((kind, name))

    async def decide(
        self, server: str, kind: PinKind, name: str, decision: Decision, by: str, sha256: str | None = None
    ) -> Pin | None:
        """Approve or reject the pin's latest definition as `by`.

        Raises:
            PinConflictError: `sha256` is given and is not the latest definition's.
        """
        pin = self._pins.get(server, {}).get((kind, name))
        if pin is None:
            return None
        if sha256 is not None and sha256 != pin.sha256:
            raise PinConflictError(pin)
        now = utc(self._clock())
        decided = pin.approve(by, now) if decision == "approve" else pin.reject(by, now)
        self._pins[server][pin.key] = decided
        return decided

    async def forget(self, server: str) -> None:
        """Drop a removed server's pins."""
        self._pins.pop(server, None)
