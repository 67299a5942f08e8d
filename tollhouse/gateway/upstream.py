"""The upstream seam: one connector per registered MCP server.

A connector speaks one transport (Streamable HTTP in both eras, stdio, legacy HTTP+SSE)
and hides the era: callers send a method and params and get the JSON-RPC `result` object
back, or a GatewayError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from tollhouse.registry.models import JSONObject

__all__ = [
    "RELAY_CAPABILITIES",
    "NotificationCallback",
    "ProgressCallback",
    "Redescribing",
    "ServerDescription",
    "ServerRequestHandler",
    "UpstreamConnector",
    "resubscribe",
]

Era = Literal["modern", "legacy"]
ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
# (method, params) of a notification the upstream sent outside any request
NotificationCallback = Callable[[str, JSONObject], Awaitable[None]]
# (method, params) of a server->client request made during a call -> its result; raising a
# GatewayError answers the upstream with that error (sampling, elicitation, roots relays)
ServerRequestHandler = Callable[[str, JSONObject], Awaitable[JSONObject]]


# What a session-era upstream may ask the downstream for through the gateway (§1.10); declared
# at initialize so the upstream asks, and refused by the gateway for a downstream without it.
RELAY_CAPABILITIES: JSONObject = {"elicitation": {"form": {}, "url": {}}, "sampling": {}, "roots": {}}


@dataclass(frozen=True)
class ServerDescription:
    """What an upstream said about itself (server/discover or initialize)."""

    era: Era
    protocol_version: str
    capabilities: JSONObject = field(default_factory=dict)
    server_info: JSONObject = field(default_factory=dict)
    instructions: str | None = None
    card: JSONObject | None = None  # an A2A agent's card (A2A connectors only)


async def resubscribe(
    request: Callable[[str, JSONObject], Awaitable[JSONObject]],
    current: frozenset[str],
    wanted: frozenset[str],
) -> None:
    """Session era: move a session's resource subscriptions from `current` to `wanted`."""
    for uri in sorted(wanted - current):
        await request("resources/subscribe", {"uri": uri})
    for uri in sorted(current - wanted):
        await request("resources/unsubscribe", {"uri": uri})


class UpstreamConnector(Protocol):
    """A live connection to one upstream MCP server."""

    name: str

    async def start(self) -> ServerDescription:
        """Connect and learn the upstream's era and capabilities.

        Raises:
            UpstreamUnavailable: it cannot be reached or refuses the handshake.
        """
        ...

    async def request(
        self,
        method: str,
        params: JSONObject,
        *,
        session_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout_seconds: float | None = None,
        on_request: ServerRequestHandler | None = None,
        client_capabilities: JSONObject | None = None,
        on_notification: NotificationCallback | None = None,
        log_level: str | None = None,
        principal_key: str | None = None,
    ) -> JSONObject:
        """Send one request and return its `result`.

        `on_request` answers server->client requests the upstream makes during this call
        (without it they get -32601); `client_capabilities` is declared on 2026-07-28 requests
        in place of the connector's own (so the upstream asks only for what the caller has);
        `on_notification` receives the call's other notifications (log messages), and
        `log_level` opts a 2026-07-28 request in to them.

        `session_key` selects the upstream session on stateful (legacy) upstreams, so one
        downstream session maps to one upstream session; modern upstreams ignore it.
        `principal_key` (`Principal.key`) is who the call is for: connectors with per-user
        upstream credentials choose the credential by it; None is the gateway itself.
        Cancelling the awaiting task cancels the upstream request (stream close on
        2026-07-28, `notifications/cancelled` on legacy sessions).

        Raises:
            UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError, UpstreamRpcError.
        """
        ...

    async def list_all(self, method: str, key: str) -> list[JSONObject]:
        """Follow `nextCursor` through every page of a list method; `key` names the items."""
        ...

    async def end_session(self, session_key: str) -> None:
        """Close the upstream session bound to `session_key`, if any."""
        ...

    async def set_resource_subscriptions(self, uris: Sequence[str]) -> None:
        """Make `watch()` deliver `notifications/resources/updated` for exactly these URIs."""
        ...

    async def watch(self, on_notification: NotificationCallback) -> None:
        """Deliver unsolicited upstream notifications (list_changed, ...) until cancelled.

        Legacy upstreams: the session's GET stream. Modern: `subscriptions/listen`.
        Returns when the upstream ends the stream or the connection breaks.
        """
        ...

    async def aclose(self) -> None:
        """Close every session and the HTTP client."""
        ...


@runtime_checkable
class Redescribing(Protocol):
    """A connector whose description can change while connected (an A2A agent's card)."""

    async def describe(self) -> ServerDescription:
        """Learn the upstream's description again (cheaply, when nothing changed)."""
        ...
