"""OAuth clients as authlib sees them: registry records, Client ID Metadata Documents, and DCR.

Three kinds of client reach the authorization server:

* admin-registered (`tollhouse clients create`): confidential, may use client credentials;
* dynamically registered (RFC 7591, kept for older MCP clients): public or confidential,
  authorization code and refresh only;
* CIMD clients (draft-ietf-oauth-client-id-metadata-document): the `client_id` is an https URL
  whose JSON document describes the client. The document is fetched through the SSRF guard
  (`tollhouse.auth.ssrf`), capped at 16 KiB, validated, and cached by URL for its
  Cache-Control max-age (60 s to 1 h). CIMD clients are always public.

Redirect URIs, wherever they come from, must be https, http on a loopback address (RFC 8252
§7.3 native apps; allowed in production too, since it only ever sends the browser back to the
user's own machine), or a private-use scheme with a dot in it (RFC 8252 §7.1,
`com.example.app:/cb`), which excludes `javascript:`, `data:`, `file:` and friends. They are
matched exactly, except that a public client registered with a loopback IP redirect may use
any port on it (RFC 8252 §7.3: the port is picked when the app starts).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin

from tollhouse.auth.resources import DEFAULT_SCOPES
from tollhouse.auth.ssrf import FetchError, UnsafeUrlError, UrlPolicy, fetch_json
from tollhouse.auth.verifiers import hash_secret
from tollhouse.registry.models import ClientRecord
from tollhouse.registry.store import RegistryStore

__all__ = [
    "CIMD_MAX_BYTES",
    "ClientDirectory",
    "OAuthClient",
    "is_metadata_url",
    "metadata_record",
    "redirect_uri_problem",
]

CIMD_MAX_BYTES = 16 * 1024
_CACHE_MIN_SECONDS = 60.0
_CACHE_MAX_SECONDS = 3600.0
_CACHE_DEFAULT_SECONDS = 300.0
_MAX_REDIRECT_URIS = 20
_MAX_URI_LENGTH = 2048
_MAX_NAME_LENGTH = 200
_PUBLIC_GRANTS = frozenset({"authorization_code", "refresh_token"})
_PRIVATE_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*\.[a-z0-9+.-]+$")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})

Fetch = Callable[..., Awaitable[tuple[Any, Mapping[str, str]]]]


def _is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri_problem(uri: object) -> str | None:
    """Why `uri` is not an acceptable redirect URI, or None if it is."""
    if not isinstance(uri, str) or not uri:
        return "a redirect URI must be a non-empty string"
    if len(uri) > _MAX_URI_LENGTH or any(ch.isspace() or ord(ch) < 0x20 for ch in uri):
        return "a redirect URI is too long or holds whitespace or control characters"
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "a redirect URI is not a URI"
    if parts.fragment or "#" in uri:
        return "a redirect URI must not have a fragment"
    scheme = parts.scheme.lower()
    if scheme in ("https", "http"):
        if not parts.hostname or "@" in parts.netloc:
            return "an http(s) redirect URI needs a host and no user information"
        if scheme == "http" and not _is_loopback_host(parts.hostname):
            return "plain http redirect URIs are allowed only on loopback addresses"
        return None
    if _PRIVATE_SCHEME.match(scheme):
        return None
    return f"redirect URI scheme {scheme!r} is not allowed"


def is_metadata_url(client_id: str, *, dev_loopback: bool) -> bool:
    """True when `client_id` is a URL naming a Client ID Metadata Document."""
    if len(client_id) > _MAX_URI_LENGTH or not client_id.startswith(("https://", "http://")):
        return False
    try:
        parts = urlsplit(client_id)
    except ValueError:
        return False
    if parts.fragment or "@" in parts.netloc or not parts.hostname:
        return False
    if parts.path in ("", "/") or "/./" in parts.path or "/../" in parts.path:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and dev_loopback and _is_loopback_host(parts.hostname)


class OAuthClient(ClientMixin):  # type: ignore[misc]
    """One client, as authlib's ClientMixin."""

    def __init__(self, record: ClientRecord, *, allowed_scopes: frozenset[str]) -> None:
        self.record = record
        self.client_id = record.client_id
        # What the client may be granted: its own list, or every scope the gateway knows.
        self.allowed_scopes = frozenset(record.scopes) if record.scopes else allowed_scopes

    @property
    def display_name(self) -> str:
        """The name shown on the consent page."""
        return self.record.client_name or self.record.name

    @property
    def metadata_host(self) -> str | None:
        """For a CIMD client, the host that serves its document (shown next to its self-chosen name)."""
        if self.record.registration != "cimd":
            return None
        return urlsplit(self.client_id).netloc

    def get_client_id(self) -> str:
        """The client id."""
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        """None: every authorization request must name its redirect URI."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The scope to grant for a request (None when nothing requested may be granted)."""
        if not scope:
            granted = [s for s in DEFAULT_SCOPES if s in self.allowed_scopes]
        else:
            granted = sorted(dict.fromkeys(s for s in scope.split() if s in self.allowed_scopes))
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exact match, or the RFC 8252 §7.3 loopback-port rule for public clients."""
        if redirect_uri in self.record.redirect_uris:
            return True
        if self.record.kind != "public":
            return False
        try:
            wanted = urlsplit(redirect_uri)
            wanted_port = wanted.port
        except ValueError:
            return False
        if wanted.scheme != "http" or wanted.hostname not in _LOOPBACK_HOSTS or wanted_port is None:
            return False
        for registered in self.record.redirect_uris:
            try:
                known = urlsplit(registered)
                known.port  # noqa: B018 - raises ValueError on a malformed port
            except ValueError:
                continue
            if (known.scheme, known.hostname, known.path, known.query) == (
                wanted.scheme,
                wanted.hostname,
                wanted.path,
                wanted.query,
            ):
                return True
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        """Constant-time comparison of the secret's hash."""
        stored = self.record.secret_hash
        return stored is not None and hmac.compare_digest(hash_secret(client_secret), stored)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Confidential clients authenticate with their secret; public clients with none."""
        if self.record.kind == "public" or self.record.secret_hash is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        """Only `code`, and only for clients allowed the authorization code grant."""
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        """Registered grants; client credentials only for admin-registered confidential clients."""
        if grant_type not in self.record.grant_types:
            return False
        if grant_type == "client_credentials":
            return self.record.registration == "admin" and self.record.secret_hash is not None
        return True


@dataclass
class ClientDirectory:
    """Looks clients up by id: the registry, or the CIMD document a URL id names."""

    registry: RegistryStore
    dev_loopback: bool
    known_scopes: Callable[[], frozenset[str]]
    clock: Callable[[], float] = time.time
    fetch: Fetch = fetch_json
    max_cached: int = 1000
    # Clients the gateway itself runs (the web console): fixed in code, never in the database.
    first_party: Mapping[str, ClientRecord] = field(default_factory=dict)
    _cache: OrderedDict[str, tuple[ClientRecord, float]] = field(default_factory=OrderedDict)

    async def get(self, client_id: str) -> OAuthClient | None:
        """The active client with this id, or None (unknown, revoked, or an unusable document)."""
        if not client_id or len(client_id) > _MAX_URI_LENGTH:
            return None
        if client_id in self.first_party:
            record: ClientRecord | None = self.first_party[client_id]
        elif is_metadata_url(client_id, dev_loopback=self.dev_loopback):
            record = await self._metadata_client(client_id)
        else:
            record = await self.registry.get_client(client_id)
        if record is None or not record.active:
            return None
        return OAuthClient(record, allowed_scopes=self.known_scopes())

    async def _metadata_client(self, url: str) -> ClientRecord | None:
        cached = self._cache.get(url)
        now = self.clock()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            document, headers = await self.fetch(
                url, UrlPolicy(allow_loopback_http=self.dev_loopback), max_bytes=CIMD_MAX_BYTES
            )
        except (UnsafeUrlError, FetchError):
            return None
        record = metadata_record(url, document)
        if record is None:
            return None
        self._cache[url] = (record, now + _cache_seconds(headers.get("Cache-Control")))
        self._cache.move_to_end(url)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return record


def metadata_record(url: str, document: object) -> ClientRecord | None:
    """The client a CIMD document describes, or None if the document is not acceptable."""
    if not isinstance(document, dict) or document.get("client_id") != url:
        return None
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not 0 < len(uris) <= _MAX_REDIRECT_URIS:
        return None
    if any(redirect_uri_problem(uri) for uri in uris):
        return None
    # A document is public: anyone can read it, so it cannot carry a shared secret, and this
    # server does not verify private_key_jwt assertions.
    if document.get("token_endpoint_auth_method", "none") != "none":
        return None
    grants = document.get("grant_types", ["authorization_code", "refresh_token"])
    if not isinstance(grants, list) or not grants or not set(grants) <= _PUBLIC_GRANTS:
        return None
    if not set(document.get("response_types", ["code"])) <= {"code"}:
        return None
    name = document.get("client_name")
    if name is not None and (not isinstance(name, str) or len(name) > _MAX_NAME_LENGTH):
        return None
    host = urlsplit(url).netloc
    return ClientRecord(
        client_id=url,
        name=f"cimd:{host}",
        team=None,
        key_hash=None,
        kind="public",
        registration="cimd",
        redirect_uris=tuple(uris),
        grant_types=tuple(dict.fromkeys(grants)),
        client_name=name or host,
    )


def _cache_seconds(cache_control: str | None) -> float:
    if not cache_control:
        return _CACHE_DEFAULT_SECONDS
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return _CACHE_MIN_SECONDS
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return _CACHE_DEFAULT_SECONDS
    return min(_CACHE_MAX_SECONDS, max(_CACHE_MIN_SECONDS, float(match.group(1))))
