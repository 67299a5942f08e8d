"""OriginGuard: the transport checks that come before authentication.

MCP Streamable HTTP servers MUST validate `Origin` (basic/transports, DNS rebinding): a request
whose Origin is present and is neither the public origin nor a loopback origin gets 403
before anything else looks at it, so a foreign page learns nothing, not even whether its
token would have been accepted.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OriginGuard", "allowed_origin"]

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


def allowed_origin(origin: str, public_origin: str) -> bool:
    """True for the public origin and for any loopback origin (any port)."""
    if origin == public_origin:
        return True
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False
    host = rest if rest.endswith("]") else rest.rsplit(":", 1)[0]
    return host in _LOOPBACK_HOSTS


class OriginGuard:
    """Refuses cross-origin requests from anywhere but the public origin or loopback."""

    def __init__(self, app: ASGIApp, *, public_origin: str) -> None:
        self.app = app
        self.public_origin = public_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"origin":
                    if not allowed_origin(value.decode("latin-1"), self.public_origin):
                        body = b"Forbidden: origin not allowed"
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 403,
                                "headers": [
                                    (b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()),
                                ],
                            }
                        )
                        await send({"type": "http.response.body", "body": body})
                        return
                    break
        await self.app(scope, receive, send)
