"""GatewayError family and the one table that maps each error to its wire channel.

Channel 1 (HTTP status) is for requests that are themselves unacceptable; channel 2 (a
JSON-RPC error) for well-formed messages that cannot be served; channel 3 (a tool result
with isError) is the upstream's own and is passed through untouched, so it has no class here.

tollhouse's own JSON-RPC codes live outside -32768..-32000, which JSON-RPC and MCP reserve
(MCP 2026-07-28 basic/index: -32020 and up are spec codes). docs/errors.md lists them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AUDIT_UNAVAILABLE",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PENDING_APPROVAL",
    "AuditUnavailable",
    "BudgetExhausted",
    "ConcurrencyLimited",
    "GatewayError",
    "GuardrailBlocked",
    "InFlightExceeded",
    "InsufficientScope",
    "InvalidArguments",
    "KillSwitchEngaged",
    "LoopBlocked",
    "MeteringUnavailable",
    "MethodNotFound",
    "PendingApproval",
    "RateLimited",
    "ToolNotCallable",
    "UnknownPrompt",
    "UnknownResource",
    "UnknownTool",
    "UpstreamAuthorizationRequired",
    "UpstreamProtocolError",
    "UpstreamRpcError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UrlElicitationRequired",
    "http_status",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# MCP 2026-07-28 spec codes
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022

# tollhouse's own codes (docs/errors.md)
UPSTREAM_UNAVAILABLE = -31001
UPSTREAM_TIMEOUT = -31002
UPSTREAM_PROTOCOL_ERROR = -31003
INSUFFICIENT_SCOPE = -31010
TOOL_NOT_CALLABLE = -31021
GUARDRAIL_BLOCKED = -31030
UPSTREAM_AUTHORIZATION_REQUIRED = -31004
PENDING_APPROVAL = -31020
RATE_LIMITED = -31040
CONCURRENCY_LIMITED = -31041
LOOP_BLOCKED = -31042
KILL_SWITCH_ENGAGED = -31043
BUDGET_EXHAUSTED = -31050
METERING_UNAVAILABLE = -31051
AUDIT_UNAVAILABLE = -31060
# MCP 2025-11-25: "URL elicitation required" (the client sends the user to a URL, then retries).
URL_ELICITATION_REQUIRED = -32042


class GatewayError(Exception):
    """An error the gateway answers on the wire; `message` and `data` are safe to show."""

    code: int = INTERNAL_ERROR
    default_message = "Internal error"
    # Channel 1 where the exchange allows it: a non-200 status (429 for a limit) and its headers,
    # sent when the answer has not turned into an event stream yet.
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC `error` member."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class UnknownTool(GatewayError):
    """No such tool, or one the caller may not see: the two look the same on the wire."""

    code = INVALID_PARAMS

    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown tool: {name}", {"name": name})


class UnknownPrompt(GatewayError):
    """No such prompt."""

    code = INVALID_PARAMS

    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown prompt: {name}", {"name": name})


class UnknownResource(GatewayError):
    """No such resource (2026-07-28 uses -32602 for resource-not-found)."""

    code = INVALID_PARAMS

    def __init__(self, uri: str) -> None:
        super().__init__(f"Unknown resource: {uri}", {"uri": uri})


class InvalidArguments(GatewayError):
    """The request's params are malformed."""

    code = INVALID_PARAMS
    default_message = "Invalid params"


class UpstreamUnavailable(GatewayError):
    """The upstream could not be reached or is marked down.

    `sent` is False only when the request provably never left: the connection could not be
    established (refused, connect timeout, TLS handshake), or the upstream is marked down. Only
    then may a non-idempotent call be retried (retries.py, SECURITY_GOALS R3).
    """

    code = UPSTREAM_UNAVAILABLE

    def __init__(self, server: str, reason: str | None = None, *, sent: bool = True) -> None:
        super().__init__(f"Upstream unavailable: {server}", {"server": server})
        # For health and the admin (why it is down); the wire keeps the plain message.
        self.reason = reason
        self.sent = sent


class UpstreamTimeout(GatewayError):
    """The upstream did not answer within its call timeout."""

    code = UPSTREAM_TIMEOUT

    def __init__(self, server: str, timeout_seconds: float) -> None:
        super().__init__(
            f"Upstream timed out: {server}", {"server": server, "timeout_seconds": timeout_seconds}
        )


class UpstreamProtocolError(GatewayError):
    """The upstream answered something that is not valid MCP."""

    code = UPSTREAM_PROTOCOL_ERROR

    def __init__(self, server: str) -> None:
        super().__init__(f"Upstream sent an invalid response: {server}", {"server": server})


class UpstreamAuthorizationRequired(GatewayError):
    """The caller has no usable credential of their own for this upstream (per-user OAuth).

    `data.connect_url` is where the user connects their account; it is absent when the
    gateway cannot get one for them by itself (token exchange had no subject token).
    """

    code = UPSTREAM_AUTHORIZATION_REQUIRED

    def __init__(self, server: str, connect_url: str | None = None) -> None:
        data: dict[str, Any] = {"server": server}
        if connect_url is not None:
            data["connect_url"] = connect_url
        super().__init__(f"Authorization required for upstream: {server}", data)


class UrlElicitationRequired(GatewayError):
    """2025-11-25 clients that support URL-mode elicitation get the connect URL in MCP's own error.

    The client shows `message` and opens `url` (the upstream-account connect flow), then
    retries the call; clients without the capability get -31004 with `data.connect_url`.
    """

    code = URL_ELICITATION_REQUIRED

    def __init__(self, server: str, url: str, elicitation_id: str) -> None:
        message = f"Connect your account for {server} to continue"
        super().__init__(
            "URL elicitation required",
            {
                "elicitations": [
                    {"mode": "url", "message": message, "url": url, "elicitationId": elicitation_id}
                ]
            },
        )


class UpstreamRpcError(GatewayError):
    """The upstream answered with a JSON-RPC error; relayed with its own code and message."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, None)
        self.code = code
        self.upstream_data = data

    def to_error(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.upstream_data is not None:
            err["data"] = self.upstream_data
        return err


class InsufficientScope(GatewayError):
    """The token lacks scopes this call needs (step-up): HTTP 403 with a Bearer challenge.

    `data.required_scopes` names only the scopes missing for *this* call, never the catalog's.
    """

    code = INSUFFICIENT_SCOPE

    def __init__(self, scopes: tuple[str, ...]) -> None:
        super().__init__("Insufficient scope", {"required_scopes": list(scopes)})
        self.scopes = scopes


class PendingApproval(GatewayError):
    """A call to a tool that pinning holds back; `data.state` says why.

    pending: new, never approved; changed: differs from its approved definition; rejected: an
    approver said no; held: its server's instructions await approval.
    """

    code = PENDING_APPROVAL

    def __init__(self, name: str, state: str) -> None:
        message = (
            f"Tool pending re-approval: {name}" if state == "changed" else f"Tool pending approval: {name}"
        )
        super().__init__(message, {"name": name, "state": state})


class ToolNotCallable(GatewayError):
    """The tool's own input schema is refused (too deep, too large, remote `$ref`…): nobody can call it."""

    code = TOOL_NOT_CALLABLE

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"Tool not callable: {name}", {"name": name, "reason": reason})


class GuardrailBlocked(GatewayError):
    """A guardrail chosen by policy found something it must block (in the arguments or the result).

    `data.detectors` names what was found, never the matched text.
    """

    code = GUARDRAIL_BLOCKED

    def __init__(self, name: str, direction: str, detectors: list[str]) -> None:
        super().__init__(
            f"Blocked by a guardrail: {name}", {"name": name, "direction": direction, "detectors": detectors}
        )


class _Refused(GatewayError):
    """A call refused before it reached its upstream, with the wire form a limit needs.

    `data` carries `retry_after_seconds` and `violated_policies` (limit ids); the HTTP answer,
    where the exchange still allows it, is a 429 with Retry-After and the RateLimit fields.
    """

    status = 429

    def __init__(
        self,
        message: str,
        data: dict[str, Any],
        *,
        retry_after: int | None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message, data)
        extra = () if retry_after is None else ((b"retry-after", str(retry_after).encode()),)
        self.headers = (*extra, *headers)


class RateLimited(_Refused):
    """A rate limit is used up (or, `data.reason` = storage_unavailable, cannot be checked: fail-closed)."""

    code = RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        violated: list[str],
        headers: tuple[tuple[bytes, bytes], ...] = (),
        reason: str = "quota_exceeded",
    ) -> None:
        data = {"retry_after_seconds": retry_after, "violated_policies": violated, "reason": reason}
        super().__init__(message, data, retry_after=retry_after, headers=headers)


class ConcurrencyLimited(_Refused):
    """Too many calls in flight for a principal or an upstream; fails fast, never queues."""

    code = CONCURRENCY_LIMITED

    def __init__(self, message: str, *, violated: list[str], reason: str = "concurrency_exceeded") -> None:
        data = {"retry_after_seconds": 1, "violated_policies": violated, "reason": reason}
        super().__init__(message, data, retry_after=1)


class InFlightExceeded(ConcurrencyLimited):
    """This replica already has its cap of calls in flight to the upstream or for the principal.

    `reason` upstream_busy (503: the upstream is saturated, not the caller at fault) or
    principal_busy (429). The caps are per replica (inflight.py); fails fast, never queues.
    """

    def __init__(self, reason: str, *, limit: int, server: str) -> None:
        if reason == "upstream_busy":
            message, setting = f"Upstream busy: {server}", "upstreams.max_in_flight"
        else:
            message, setting = (
                "Too many calls in flight for this principal",
                "limits.max_in_flight_per_principal",
            )
        super().__init__(message, violated=[setting], reason=reason)
        assert self.data is not None
        self.data.update(server=server, limit=limit)
        if reason == "upstream_busy":
            self.status = 503


class LoopBlocked(_Refused):
    """The loop breaker: the same principal made the same call (tool and arguments) too often."""

    code = LOOP_BLOCKED

    def __init__(self, name: str, *, retry_after: int, threshold: int, window_seconds: int) -> None:
        data = {
            "retry_after_seconds": retry_after,
            "violated_policies": ["loop-breaker"],
            "name": name,
            "threshold": threshold,
            "window_seconds": window_seconds,
        }
        super().__init__(f"Repeated identical call blocked: {name}", data, retry_after=retry_after)


class KillSwitchEngaged(GatewayError):
    """An operator stopped this subject, client or server (on every replica): no retry will help."""

    code = KILL_SWITCH_ENGAGED

    def __init__(self, kind: str, value: str) -> None:
        super().__init__(f"Stopped by an operator ({kind} kill switch)", {"kind": kind, "value": value})


class BudgetExhausted(GatewayError):
    """A hard budget has too little left for this call; `retry_after_seconds` is when its period resets."""

    code = BUDGET_EXHAUSTED
    status = 429

    def __init__(self, budget: str, name: str, period: str, retry_after: int) -> None:
        data = {
            "budget": budget,
            "name": name,
            "period": period,
            "retry_after_seconds": retry_after,
            "violated_policies": [budget],
        }
        super().__init__(f"Budget exhausted: {budget} ({name}, {period})", data)
        self.headers = ((b"retry-after", str(retry_after).encode()),)


class MeteringUnavailable(GatewayError):
    """A fail-closed budget cannot be checked because its ledger store (Redis) is down."""

    code = METERING_UNAVAILABLE
    status = 503

    def __init__(self, budget: str) -> None:
        data = {"budget": budget, "reason": "ledger_unavailable", "retry_after_seconds": 1}
        super().__init__(f"Budget cannot be checked right now (fail-closed): {budget}", data)
        self.headers = ((b"retry-after", b"1"),)


class AuditUnavailable(GatewayError):
    """The call's audit record cannot be committed and the audit trail fails closed."""

    code = AUDIT_UNAVAILABLE
    status = 503

    def __init__(self) -> None:
        data = {"reason": "audit_unavailable", "retry_after_seconds": 1}
        super().__init__("The audit trail cannot record this call right now (fail-closed)", data)
        self.headers = ((b"retry-after", b"1"),)


class MethodNotFound(GatewayError):
    """The method is not served on this endpoint."""

    code = METHOD_NOT_FOUND

    def __init__(self, method: str) -> None:
        super().__init__("Method not found", None)
        self.method = method

    def to_error(self) -> dict[str, Any]:
        # `data` is the bare method name, as the MCP SDK servers send it.
        return {"code": self.code, "message": self.message, "data": self.method}


def http_status(error: GatewayError, *, modern: bool) -> int:
    """The HTTP status that carries `error` (the one table of channel 1 vs channel 2).

    A well-formed request that cannot be served is answered with HTTP 200 and the JSON-RPC
    error, in both eras, so every MCP client reads it; the exceptions are an unknown method on
    2026-07-28, which the transport answers with 404 (basic/transports: the body tells it
    apart from a wrong URL), and a missing scope, which is a 403 step-up challenge.
    """
    if modern and isinstance(error, MethodNotFound):
        return 404
    if isinstance(error, InsufficientScope):
        # MCP authorization §scope challenge: the client re-authorizes with the named scopes.
        return 403
    return 200
