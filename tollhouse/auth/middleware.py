"""BearerAuthMiddleware: every request to a protected endpoint carries a verified bearer token.

Pure ASGI (no BaseHTTPMiddleware: it would put a task group in front of every SSE stream).
The principal goes into `scope["tollhouse.principal"]`. Refusals follow RFC 6750 §3 and
RFC 9728 §5.1: 401 with `WWW-Authenticate: Bearer resource_metadata=…, scope=…` so a client
can discover where to sign in, 403 `insufficient_scope` naming the scopes it lacks, and a
token in the query string is refused outright (MCP authorization forbids it; it leaks into logs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from tollhouse.auth.failures import AuthFailureLog
from tollhouse.auth.principal import Principal
from tollhouse.auth.resources import ResourceSpace
from tollhouse.auth.tokens import InvalidTokenError
from tollhouse.auth.verifiers import TokenVerifier

__all__ = [
    "PRINCIPAL_KEY",
    "RESOURCE_METADATA_KEY",
    "BearerAuthMiddleware",
    "bearer_token",
    "challenge",
    "client_address",
    "principal_of",
]

PRINCIPAL_KEY = "tollhouse.principal"
RESOURCE_METADATA_KEY = "tollhouse.resource_metadata"


def bearer_token(scope: Scope) -> str | None:
    """The bearer token of the Authorization header, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def principal_of(scope: Scope) -> Principal:
    """The principal the middleware established for this request."""
    principal: Principal = scope[PRINCIPAL_KEY]
    return principal


def client_address(scope: Scope) -> str | None:
    """The peer address of the connection (trusted-proxy handling comes with the listener settings)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def challenge(
    *,
    resource_metadata: str,
    scopes: Iterable[str] = (),
    error: str | None = None,
    description: str | None = None,
) -> bytes:
    """A `WWW-Authenticate: Bearer …` value (RFC 6750 §3, RFC 9728 §5.1)."""
    parts: list[str] = []
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{_quote(description)}"')
    if scope_list := " ".join(scopes):
        parts.append(f'scope="{_quote(scope_list)}"')
    parts.append(f'resource_metadata="{_quote(resource_metadata)}"')
    return ("Bearer " + ", ".join(parts)).encode()


_DESCRIPTIONS = {
    "missing": "Authentication required",
    "query": "Tokens are not accepted in the query string",
    "scheme": "Use the Bearer scheme",
}


class BearerAuthMiddleware:
    """Rejects requests without a verified bearer token; records the principal in the scope."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        resources: ResourceSpace,
        required_scopes: tuple[str, ...] = ("mcp",),
        failures: AuthFailureLog | None = None,
        endpoint_of: Callable[[str], str] | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.resources = resources
        self.required_scopes = required_scopes
        self.failures = failures or AuthFailureLog()
        # Paths under one endpoint (an agent's card and HTTP+JSON routes) share its resource.
        self.endpoint_of = endpoint_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.endpoint_of is not None:
            path = self.endpoint_of(path)
        resource = self.resources.uri(path)
        metadata = self.resources.metadata_url(path)
        token = bearer_token(scope)
        if _token_in_query(scope):
            await self._refuse(scope, send, 401, "query", token, metadata, "invalid_request")
            return
        if token is None:
            reason = "scheme" if _has_authorization(scope) else "missing"
            await self._refuse(
                scope, send, 401, reason, None, metadata, None if reason == "missing" else "invalid_request"
            )
            return
        try:
            principal = await self.verifier.verify(token, resource)
        except InvalidTokenError as exc:
            await self._refuse(scope, send, 401, exc.reason, token, metadata, "invalid_token")
            return
        missing = [s for s in self.required_scopes if s not in principal.scopes]
        if missing:
            await self._refuse(
                scope, send, 403, "insufficient_scope", token, metadata, "insufficient_scope", missing
            )
            return
        scope[PRINCIPAL_KEY] = principal
        scope[RESOURCE_METADATA_KEY] = metadata
        await self.app(scope, receive, send)

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        status: int,
        reason: str,
        token: str | None,
        metadata: str,
        error: str | None,
        scopes: list[str] | None = None,
    ) -> None:
        self.failures.record(
            reason=reason, path=scope["path"], source=client_address(scope), token=token, status=status
        )
        description = _DESCRIPTIONS.get(reason, "The access token is not valid here")
        if status == 403:
            description = "The token lacks a scope this endpoint needs"
        header = challenge(
            resource_metadata=metadata,
            scopes=scopes if scopes is not None else self.required_scopes,
            error=error,
            description=description if error else None,
        )
        body = orjson.dumps({"error": error or "invalid_token", "error_description": description})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", header),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _has_authorization(scope: Scope) -> bool:
    return any(name == b"authorization" for name, _ in scope["headers"])


def _token_in_query(scope: Scope) -> bool:
    raw: bytes = scope.get("query_string", b"")
    if b"access_token" not in raw:
        return False
    return any(key == "access_token" for key, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
