"""Protected resources: which URIs name a tollhouse endpoint (RFC 8707 / RFC 9728).

Each endpoint — `/mcp`, `/mcp/{toolset}`, `/servers/{server}/mcp`, `/a2a/{agent}` — is its own
resource, identified by `public_url` plus its path (never the query string); a token whose
audience is `public_url` itself is accepted on all of them (DESIGN.md, Contract details).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_SCOPES",
    "ResourceSpace",
]

# What a token request without `scope` gets: enough to use the MCP and A2A endpoints.
DEFAULT_SCOPES: tuple[str, ...] = ("mcp", "a2a")

_NAME = r"[a-z0-9][a-z0-9-]{0,31}"
_TOOLSET = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_PATHS = (
    re.compile(r"^/mcp$"),
    re.compile(rf"^/mcp/{_TOOLSET}$"),
    re.compile(rf"^/servers/{_NAME}/mcp$"),
    re.compile(rf"^/a2a/{_NAME}$"),
)


class ResourceSpace:
    """The resource URIs under one public URL."""

    def __init__(self, public_url: str) -> None:
        self.base = public_url.rstrip("/")
        parts = urlsplit(self.base)
        self._origin = f"{parts.scheme}://{parts.netloc}".lower()
        self._prefix = parts.path.rstrip("/")

    def uri(self, path: str) -> str:
        """The resource URI of an endpoint path (e.g. `/mcp`)."""
        return self.base + path

    def accepted_audiences(self, resource: str) -> frozenset[str]:
        """Audiences a token may carry to be used at `resource`."""
        return frozenset({resource, self.base, self.base + "/"})

    def canonical(self, value: str) -> str | None:
        """`value` as a canonical resource URI of ours, or None if it names none of our endpoints.

        Accepts the gateway itself (`public_url`) and every endpoint shape; a trailing slash is
        dropped; a fragment, query or foreign origin is refused.
        """
        try:
            parts = urlsplit(value)
        except ValueError:
            return None
        if parts.fragment or parts.query or f"{parts.scheme}://{parts.netloc}".lower() != self._origin:
            return None
        path = parts.path.rstrip("/")
        if not path.startswith(self._prefix):
            return None
        local = path[len(self._prefix) :]
        if local == "":
            return self.base
        if any(p.match(local) for p in _PATHS):
            return self.base + local
        return None

    def metadata_path(self, endpoint_path: str) -> str:
        """Where this endpoint's protected-resource metadata lives (RFC 9728 §3.1: path inserted)."""
        return "/.well-known/oauth-protected-resource" + self._prefix + endpoint_path

    def metadata_url(self, endpoint_path: str) -> str:
        """The absolute URL of the endpoint's protected-resource metadata."""
        return self._origin + self.metadata_path(endpoint_path)
