"""Pinning in the gateway: what each catalog sync does to the pins, and the call stage that enforces them.

`Pinning` belongs to the upstream pool. On every sync it folds the new catalog into the
stored pins (registry/pins.py rules, scanner findings attached) and keeps, per server, the
status of each current tool and whether the server's instructions are approved; the pool
builds that into each immutable snapshot (`PinView`), so no request reads the database.
Lists show approved tools only. `PinStage` answers a call to any other tool with -31020
"pending approval" and never reaches the upstream; it runs after authorization, so a tool the
caller may not call still looks unknown whatever its pin state.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from tollhouse.gateway.errors import PendingApproval
from tollhouse.gateway.snapshot import PinView
from tollhouse.policies.scanner import scan_definition
from tollhouse.registry.models import JSONObject, Upstream, UpstreamCatalog
from tollhouse.registry.pin_store import Decision, PinStore
from tollhouse.registry.pins import CARD, INSTRUCTIONS, Pin, PinKey, PinKind, reconcile

if TYPE_CHECKING:
    from tollhouse.gateway.pipeline import CallContext, Next

__all__ = ["PinStage", "Pinning"]


class Pinning:
    """The pins of every registered server, as last read from or written to the store."""

    def __init__(self, store: PinStore) -> None:
        self._store = store
        self._pins: dict[str, dict[PinKey, Pin]] = {}
        self._view = PinView()

    async def load(self) -> None:
        """Read every stored pin (at start)."""
        self._pins = await self._store.load()
        self._rebuild_view()

    async def sync(
        self, upstream: Upstream, catalog: UpstreamCatalog, previous: Iterable[str], others: Iterable[str]
    ) -> None:
        """Fold a freshly synced catalog into the server's pins.

        `previous` are the tool names of the server's last catalog (a name gone from it while a
        new one appears is a possible rename); `others` are other servers' exposed tool names,
        which the scanner flags when a description mentions them.
        """
        other_tools = tuple(others)
        own_tools = tuple(str(t.get("name")) for t in catalog.tools)
        previous_tools = frozenset(previous)
        now = datetime.now(UTC)

        def scan(kind: PinKind, definition: JSONObject) -> list[JSONObject]:
            return scan_definition(definition, other_tools=other_tools, own_tools=own_tools)

        pins = await self._store.fold(
            upstream.name,
            lambda stored: reconcile(
                upstream.name,
                upstream.approval,
                catalog.tools,
                catalog.instructions,
                stored,
                previous_tools,
                now,
                scan,
                catalog.card,
            ),
        )
        # None: the server was removed meanwhile; nothing of it is served any more.
        self._pins[upstream.name] = pins or {}
        self._rebuild_view()

    async def decide(
        self, server: str, kind: PinKind, name: str, decision: Decision, by: str, sha256: str | None = None
    ) -> Pin | None:
        """Approve or reject a pin's latest definition; None if there is no such pin.

        Raises:
            PinConflictError: `sha256` is not the latest definition's.
        """
        pin = await self._store.decide(server, kind, name, decision, by, sha256)
        if pin is not None:
            self._pins.setdefault(server, {})[pin.key] = pin
            self._rebuild_view()
        return pin

    async def forget(self, server: str, *, stored: bool = True) -> None:
        """Drop a removed server's pins (`stored=False`: from memory only; another replica removed it)."""
        self._pins.pop(server, None)
        if stored:
            await self._store.forget(server)
        self._rebuild_view()

    def pins(self, server: str) -> dict[PinKey, Pin]:
        """The server's pins (tools that are gone included)."""
        return dict(self._pins.get(server, {}))

    def pin(self, server: str, kind: PinKind, name: str) -> Pin | None:
        """One pin, or None."""
        return self._pins.get(server, {}).get((kind, name))

    def servers(self) -> list[str]:
        """Servers that have pins, by name."""
        return sorted(self._pins)

    def view(self) -> PinView:
        """What the next snapshot may serve (immutable)."""
        return self._view

    def _rebuild_view(self) -> None:
        tools: dict[str, MappingProxyType[str, str]] = {}
        held: set[str] = set()
        for server, pins in self._pins.items():
            tools[server] = MappingProxyType(
                {name: pin.status for (kind, name), pin in pins.items() if kind == "tool"}
            )
            instructions = pins.get(INSTRUCTIONS)
            if instructions is None or instructions.status != "approved":
                held.add(server)
            card = pins.get(CARD)
            if card is not None and card.status != "approved":
                held.add(server)
        self._view = PinView(tools=MappingProxyType(tools), held=frozenset(held))


class PinStage:
    """Refuse a call to a tool pinning holds back, with -31020 and why; nothing reaches the upstream."""

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        if tool.pin != "approved":
            raise PendingApproval(tool.exposed, tool.pin)
        return await call_next(ctx)
