"""BearerAuthMiddleware: every request to a protected app carries a verified bearer token.

Pure ASGI (no BaseHTTPMiddleware: it would put a task group in front of every SSE stream).
The principal goes into `scope["tollhouse.principal"]`; a missing or unacceptable token gets
401 with `WWW-Authenticate: Bearer` (RFC 6750 §3) before the app sees the request.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from tollhouse.auth.principal import Principal
from tollhouse.auth.verifiers import TokenVerifier

__all__ = ["PRINCIPAL_KEY", "BearerAuthMiddleware", "bearer_token", "principal_of"]

PRINCIPAL_KEY = "tollhouse.principal"


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


class BearerAuthMiddleware:
    """Rejects requests without a verified bearer token; records the principal in the scope."""

    def __init__(self, app: ASGIApp, *, verifier: TokenVerifier, realm: str = "tollhouse") -> None:
        self.app = app
        self.verifier = verifier
        self._challenge = f'Bearer realm="{realm}"'.encode()
        self._invalid = f'Bearer realm="{realm}", error="invalid_token"'.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        principal = await self.verifier.verify(token) if token else None
        if principal is None:
            await _unauthorized(send, self._invalid if token else self._challenge)
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, challenge: bytes) -> None:
    body = b'{"error":"invalid_token","error_description":"Authentication required"}'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
