"""CORS for the OAuth discovery, JWKS and token endpoints, so browser-based MCP clients can sign in.

Only these public, credential-free endpoints are opened (`Access-Control-Allow-Origin: *`,
never `Allow-Credentials`, so no cookie is ever sent cross-origin). The sign-in pages are
top-level navigations and need none; the MCP endpoints keep their own Origin policy.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DiscoveryCors"]

_PREFIXES = ("/.well-known/oauth-", "/.well-known/openid-configuration")
_PATHS = frozenset({"/oauth/token", "/oauth/register", "/oauth/revoke", "/oauth/jwks.json"})
_PREFLIGHT = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", b"Authorization, Content-Type, MCP-Protocol-Version"),
    (b"access-control-max-age", b"600"),
    (b"content-length", b"0"),
]


class DiscoveryCors:
    """Adds `Access-Control-Allow-Origin: *` to the discovery and token endpoints and answers preflights."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _opened(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": _PREFLIGHT})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_origin(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"access-control-allow-origin" for name, _ in headers):
                    headers.append((b"access-control-allow-origin", b"*"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_origin)


def _opened(path: str) -> bool:
    return path in _PATHS or path.startswith(_PREFIXES)
