"""In-flight caps that fail fast (SECURITY_GOALS R4): per upstream and per principal, per replica.

A tools/call holds one slot of its upstream and one of its principal from just before it is
sent until its answer, failure or cancellation is back (a context manager: every path gives
the slots back). A call that would go over either cap is refused at once with -31041
(`principal_busy`, 429, or `upstream_busy`, 503), never queued: a queue behind a saturated
upstream only moves the overload into the gateway's memory and past the client's deadline.

The counters are plain integers of this process (one event loop, so no lock), checked last
before the upstream so that calls refused by validation, guardrails or limits hold no slot.
They are local on purpose: a replica protects itself and its share of the upstream without a
round trip. The admin's concurrency *rules* (admission.py, counted in Redis) are the limits that
hold across replicas. The per-upstream count also sizes the retry budget (retries.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tollhouse.gateway.errors import InFlightExceeded
from tollhouse.gateway.settings import LimitsSettings, UpstreamDefaults
from tollhouse.registry.models import JSONObject, Upstream

if TYPE_CHECKING:
    from tollhouse.gateway.pipeline import CallContext, Next

__all__ = ["InFlight", "InFlightStage"]

UpstreamOf = Callable[[str], Upstream | None]


class InFlight:
    """The calls in flight on this replica, per upstream and per principal, and their caps."""

    def __init__(self, upstreams: UpstreamDefaults, limits: LimitsSettings, upstream_of: UpstreamOf) -> None:
        self.settings = upstreams
        self._default = upstreams.max_in_flight
        self._per_principal = limits.max_in_flight_per_principal
        self._upstream_of = upstream_of
        # Only non-zero counts are kept, so principals that come and go leave nothing behind.
        self._servers: dict[str, int] = {}
        self._principals: dict[str, int] = {}

    def limit(self, server: str) -> int:
        """The cap of `server` (its own `max_in_flight`, else the default); 0 means none."""
        upstream = self._upstream_of(server)
        if upstream is not None and upstream.max_in_flight is not None:
            return upstream.max_in_flight
        return self._default

    def count(self, server: str) -> int:
        """Calls in flight to `server` now."""
        return self._servers.get(server, 0)

    def principal_count(self, principal: str) -> int:
        """Calls in flight for the principal (its `Principal.key`) now."""
        return self._principals.get(principal, 0)

    @contextmanager
    def slot(self, server: str, principal: str) -> Iterator[None]:
        """Hold a slot of `server` and of `principal` for the block.

        Raises:
            InFlightExceeded: either cap is reached (the principal's is checked first: when a
                caller fills the upstream by itself, that is what it should hear).
        """
        mine = self._principals.get(principal, 0)
        if self._per_principal and mine >= self._per_principal:
            raise InFlightExceeded("principal_busy", limit=self._per_principal, server=server)
        held = self._servers.get(server, 0)
        limit = self.limit(server)
        if limit and held >= limit:
            raise InFlightExceeded("upstream_busy", limit=limit, server=server)
        self._servers[server] = held + 1
        self._principals[principal] = mine + 1
        try:
            yield
        finally:
            _give_back(self._servers, server)
            _give_back(self._principals, principal)


def _give_back(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class InFlightStage:
    """The pipeline step that holds the call's slots while the upstream works on it (last before it)."""

    def __init__(self, in_flight: InFlight) -> None:
        self._in_flight = in_flight

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        with self._in_flight.slot(tool.server, ctx.principal.key):
            return await call_next(ctx)
