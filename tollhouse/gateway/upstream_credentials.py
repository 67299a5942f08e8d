"""OAuth credentials for upstreams: discovery, token requests, and the per-request providers.

Three `UpstreamAuth` types get their bearer token from an authorization server rather than
from configuration (SECURITY_GOALS K4):

* `oauth_client_credentials` — the gateway's own token for the upstream (one per upstream);
* `token_exchange` — RFC 8693: the caller's identity (a subject token the app provides for
  the principal) exchanged for a token for this upstream, one per principal;
* `oauth_authorization_code` — each user's own consent, obtained once through the connect
  flow (upstream_oauth.py), kept encrypted in the vault, refreshed (with rotation) as needed.

The token endpoint is configured (`token_url`) or discovered: the upstream's RFC 9728
protected-resource metadata names its authorization server, whose RFC 8414 (or OpenID)
metadata names the endpoints. The upstream URL is admin-registered and may be internal, so
its own metadata is fetched directly; every URL learned from metadata is a peer's word and
goes through the SSRF guard (auth/ssrf.py), POSTs to the token endpoint included. Every token
request carries RFC 8707 `resource` = the upstream URL, so a token minted for one upstream is
not good at another. Secrets and tokens never reach logs or error messages: the messages name
the upstream, the endpoint's host and the OAuth error code only.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import anyio
import orjson
from yarl import URL

from tollhouse.auth.ssrf import (
    FetchError,
    PinnedResolver,
    UnsafeUrlError,
    UrlPolicy,
    fetch_json,
    resolve_safe,
)
from tollhouse.gateway.credentials import (
    CredentialProvider,
    SecretSource,
    StaticCredentials,
    header_for,
    vault_subject,
)
from tollhouse.gateway.errors import GatewayError, UpstreamAuthorizationRequired, UpstreamUnavailable
from tollhouse.registry.models import Upstream
from tollhouse.registry.secrets_store import SqlSecretStore

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "AuthServer",
    "AuthorizationCodeCredentials",
    "ClientCredentials",
    "OAuthClient",
    "OAuthError",
    "SubjectTokenSource",
    "TokenExchangeCredentials",
    "TokenSet",
    "UpstreamCredentials",
    "UserTokenVault",
    "client_secret",
]

logger = logging.getLogger(__name__)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
# A token is renewed this long before it expires, so a request never leaves with a dying one.
EXPIRY_SKEW_SECONDS = 30.0
# A token response without expires_in: assume a short life rather than forever.
DEFAULT_LIFETIME_SECONDS = 300.0
_MAX_DOCUMENT_BYTES = 64 * 1024
_DISCOVERY_TTL_SECONDS = 3600.0
_MAX_CACHED_TOKENS = 10_000
_PRM_PATH = "/.well-known/oauth-protected-resource"

# (principal key) -> a token identifying that principal to the identity provider, or None.
SubjectTokenSource = Callable[[str], Awaitable[str | None]]
Clock = Callable[[], float]


class OAuthError(Exception):
    """Discovery or a token request failed; the message is safe to log (no secret, no body).

    `error` is the OAuth error code when the server sent one (`invalid_grant`, …).
    """

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class UserTokenVault(Protocol):
    """Per-user sealed token storage (registry/secrets_store.py)."""

    async def get_user_token(self, subject: str, upstream: str) -> bytes | None:
        """The stored payload, or None."""
        ...

    async def put_user_token(self, subject: str, upstream: str, payload: bytes) -> None:
        """Store (or replace) the payload."""
        ...

    async def delete_user_token(self, subject: str, upstream: str) -> bool:
        """Forget it."""
        ...


@dataclass(frozen=True)
class AuthServer:
    """An upstream's authorization server endpoints; `trusted` when the admin configured them."""

    token_endpoint: str
    authorization_endpoint: str | None = None
    issuer: str | None = None
    trusted: bool = False


@dataclass(frozen=True)
class TokenSet:
    """An access token, when it expires (epoch seconds), and the refresh token if any."""

    access_token: str
    expires_at: float | None = None
    refresh_token: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return f"TokenSet(expires_at={self.expires_at!r}, refresh={self.refresh_token is not None})"

    def fresh(self, now: float) -> bool:
        """True while it can still be sent (not within the skew of its expiry)."""
        return self.expires_at is None or now < self.expires_at - EXPIRY_SKEW_SECONDS

    def to_json(self) -> bytes:
        """The vault payload."""
        return orjson.dumps(
            {
                "access_token": self.access_token,
                "expires_at": self.expires_at,
                "refresh_token": self.refresh_token,
                "scope": self.scope,
            }
        )

    @classmethod
    def from_json(cls, payload: bytes) -> TokenSet:
        """Read a vault payload.

        Raises:
            ValueError: it is not one.
        """
        data = orjson.loads(payload)
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise ValueError("not a token payload")
        expires = data.get("expires_at")
        refresh = data.get("refresh_token")
        scope = data.get("scope")
        return cls(
            data["access_token"],
            float(expires) if isinstance(expires, int | float) else None,
            refresh if isinstance(refresh, str) else None,
            scope if isinstance(scope, str) else None,
        )

    @classmethod
    def from_response(cls, body: Any, now: float, previous_refresh: str | None = None) -> TokenSet:
        """Read a token endpoint's success response (RFC 6749 §5.1).

        A refresh that returns no new refresh token keeps the previous one (§6).

        Raises:
            OAuthError: it is not a bearer token response.
        """
        if not isinstance(body, dict):
            raise OAuthError("the token response is not a JSON object")
        token = body.get("access_token")
        token_type = body.get("token_type")
        if not isinstance(token, str) or not token:
            raise OAuthError("the token response has no access_token")
        if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "n_a"):
            # RFC 8693 §2.2.1: an exchanged token that is not for the Authorization header says N_A.
            raise OAuthError("the token response is not a bearer token")
        lifetime = body.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME_SECONDS
        refresh = body.get("refresh_token")
        scope = body.get("scope")
        return cls(
            token,
            now + float(lifetime),
            refresh if isinstance(refresh, str) and refresh else previous_refresh,
            scope if isinstance(scope, str) else None,
        )


class OAuthClient:
    """HTTP to upstream authorization servers: endpoint discovery and token requests.

    `policy` is the SSRF policy for URLs learned from metadata; URLs the admin configured
    (the upstream's own, `token_url`, `authorization_url`) are fetched without it.
    """

    def __init__(self, policy: UrlPolicy, *, timeout_seconds: float = 10.0, clock: Clock = time.time) -> None:
        self._policy = policy
        self._timeout = timeout_seconds
        self._clock = clock
        self._servers: dict[tuple[str | None, str | None, str | None], tuple[float, AuthServer]] = {}

    @property
    def clock(self) -> Clock:
        """The wall clock token expiries are measured on."""
        return self._clock

    async def auth_server(self, upstream: Upstream) -> AuthServer:
        """The endpoints for `upstream`: configured, else discovered (cached for an hour).

        Raises:
            OAuthError: discovery failed or was refused.
        """
        auth = upstream.auth
        needs_authorize = auth.type == "oauth_authorization_code"
        if auth.token_url and (auth.authorization_url or not needs_authorize):
            return AuthServer(auth.token_url, auth.authorization_url, None, trusted=True)
        key = (upstream.url, auth.token_url, auth.authorization_url)
        cached = self._servers.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        server = await self._discover(upstream)
        if auth.token_url or auth.authorization_url:
            # Configured endpoints win over discovered ones, and keep the admin's trust.
            server = AuthServer(
                auth.token_url or server.token_endpoint,
                auth.authorization_url or server.authorization_endpoint,
                server.issuer,
                trusted=bool(auth.token_url),  # trust matters for token POSTs only
            )
        if needs_authorize and not server.authorization_endpoint:
            raise OAuthError(
                f"upstream {upstream.name}: its authorization server has no authorization endpoint"
            )
        self._servers[key] = (now + _DISCOVERY_TTL_SECONDS, server)
        return server

    def forget(self, upstream: Upstream) -> None:
        """Drop the cached endpoints of `upstream` (they are rediscovered on next use)."""
        self._servers.pop((upstream.url, upstream.auth.token_url, upstream.auth.authorization_url), None)

    async def _discover(self, upstream: Upstream) -> AuthServer:
        if upstream.url is None:
            raise OAuthError(f"upstream {upstream.name} has no URL to discover from")
        issuer = await self._protected_resource_issuer(upstream.name, upstream.url)
        metadata = await self._authorization_server_metadata(upstream.name, issuer)
        token_endpoint = metadata.get("token_endpoint")
        authorization_endpoint = metadata.get("authorization_endpoint")
        if not isinstance(token_endpoint, str) or not _is_http_url(token_endpoint):
            raise OAuthError(f"upstream {upstream.name}: the authorization server names no token endpoint")
        if authorization_endpoint is not None and (
            not isinstance(authorization_endpoint, str) or not _is_http_url(authorization_endpoint)
        ):
            # Only http(s) is ever opened or redirected to (never javascript:, data:, file:).
            raise OAuthError(f"upstream {upstream.name}: the authorization endpoint is not an http(s) URL")
        return AuthServer(token_endpoint, authorization_endpoint, issuer, trusted=False)

    async def _protected_resource_issuer(self, name: str, resource: str) -> str:
        """RFC 9728: the first authorization server of the upstream's protected-resource metadata."""
        parts = urlsplit(resource)
        origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        path = parts.path.rstrip("/")
        candidates = [origin + _PRM_PATH + path] if path else []
        candidates.append(origin + _PRM_PATH)
        document: Any = None
        for url in candidates:
            document = await self._get_trusted_json(url)
            if document is not None:
                break
        if not isinstance(document, dict):
            raise OAuthError(f"upstream {name}: no protected-resource metadata")
        named = document.get("resource")
        if isinstance(named, str) and named.rstrip("/") not in (resource.rstrip("/"), origin):
            # §3.3: metadata for another resource must not be used.
            raise OAuthError(f"upstream {name}: its protected-resource metadata is for another resource")
        servers = document.get("authorization_servers")
        if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
            raise OAuthError(f"upstream {name}: its metadata names no authorization server")
        issuer = servers[0]
        if not _is_http_url(issuer):
            raise OAuthError(f"upstream {name}: the authorization server is not an http(s) URL")
        return issuer

    async def _authorization_server_metadata(self, name: str, issuer: str) -> dict[str, Any]:
        """RFC 8414 metadata (or OpenID discovery) of `issuer`, through the SSRF guard."""
        parts = urlsplit(issuer)
        origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        path = parts.path.rstrip("/")
        candidates = [
            origin + "/.well-known/oauth-authorization-server" + path,
            origin + "/.well-known/openid-configuration" + path,
        ]
        if path:
            candidates.append(origin + path + "/.well-known/openid-configuration")
        for url in candidates:
            try:
                document, _ = await fetch_json(
                    url, self._policy, max_bytes=_MAX_DOCUMENT_BYTES, timeout_seconds=self._timeout
                )
            except UnsafeUrlError as exc:
                raise OAuthError(f"upstream {name}: authorization server refused by policy: {exc}") from None
            except FetchError as exc:
                if exc.status in (404, 405, 410):
                    continue
                raise OAuthError(f"upstream {name}: authorization server metadata: {exc}") from None
            if not isinstance(document, dict):
                continue
            if document.get("issuer") != issuer:
                # RFC 8414 §3.3: the document must be about the issuer we asked for.
                raise OAuthError(f"upstream {name}: the authorization server metadata names another issuer")
            return document
        raise OAuthError(f"upstream {name}: no authorization server metadata at {parts.netloc}")

    async def _get_trusted_json(self, url: str) -> Any:
        """GET a document at an admin-registered origin; None when it is not there."""
        async with self._session(None) as http:
            try:
                async with http.get(url, headers={"Accept": "application/json"}, allow_redirects=False) as r:
                    if r.status != 200:
                        return None
                    body = await _read_capped(r)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise OAuthError(
                    f"protected-resource metadata at {urlsplit(url).netloc}: {type(exc).__name__}"
                ) from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return None

    async def request_token(
        self, server: AuthServer, form: Mapping[str, str], client_id: str | None, client_secret: str | None
    ) -> Any:
        """POST a token request; returns the parsed success body.

        A client with a secret authenticates with HTTP Basic (client_secret_basic, RFC 6749
        §2.3.1); a public one sends its `client_id` in the form.

        Raises:
            OAuthError: refused (with the OAuth error code) or failed.
        """
        body = dict(form)
        headers = {"Accept": "application/json"}
        if client_secret is not None and client_id is not None:
            pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif client_id is not None:
            body["client_id"] = client_id
        host = urlsplit(server.token_endpoint).netloc
        try:
            async with (
                self._session(None if server.trusted else server.token_endpoint) as http,
                http.post(server.token_endpoint, data=body, headers=headers, allow_redirects=False) as r,
            ):
                status = r.status
                raw = await _read_capped(r)
        except UnsafeUrlError as exc:
            raise OAuthError(f"token endpoint at {host} refused by policy: {exc}") from None
        except FetchError as exc:
            raise OAuthError(f"token endpoint at {host}: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OAuthError(f"token endpoint at {host}: {type(exc).__name__}") from None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if status != 200:
            error = parsed.get("error") if isinstance(parsed, dict) else None
            code = error if isinstance(error, str) and error.isascii() and len(error) <= 64 else None
            raise OAuthError(
                f"token endpoint at {host} answered HTTP {status} ({code or 'no error code'})", error=code
            )
        return parsed

    @asynccontextmanager
    async def _session(self, guarded_url: str | None) -> AsyncIterator[aiohttp.ClientSession]:
        """A short-lived client; pinned to the SSRF-validated addresses of `guarded_url` when given."""
        connector: aiohttp.TCPConnector | None = None
        if guarded_url is not None:
            addresses = await resolve_safe(guarded_url, self._policy)
            host = URL(guarded_url).host or ""
            connector = aiohttp.TCPConnector(resolver=PinnedResolver(host, addresses))
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as http:
            yield http


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > _MAX_DOCUMENT_BYTES:
            raise OAuthError("the response is too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def client_secret(
    upstream: Upstream, environ: Mapping[str, str], secrets: SecretSource | None
) -> str | None:
    """The OAuth client secret of `upstream`: its variable, else the stored one (None: a public client).

    Raises:
        OAuthError: the variable is unset, or the stored secret cannot be decrypted.
    """
    auth = upstream.auth
    if auth.client_secret_env:
        value = environ.get(auth.client_secret_env)
        if not value:
            raise OAuthError(f"upstream {upstream.name}: variable {auth.client_secret_env} is not set")
        return value
    if secrets is None:
        return None
    try:
        return await secrets.get_secret(upstream.name, "client_secret")
    except ValueError:  # VaultError
        raise OAuthError(f"upstream {upstream.name}: the stored client secret cannot be decrypted") from None


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.username


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits on it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class _TokenCache:
    """A bounded LRU of tokens by key (principal or subject)."""

    def __init__(self, limit: int = _MAX_CACHED_TOKENS) -> None:
        self._items: OrderedDict[str, TokenSet] = OrderedDict()
        self._limit = limit

    def get(self, key: str) -> TokenSet | None:
        token = self._items.get(key)
        if token is not None:
            self._items.move_to_end(key)
        return token

    def put(self, key: str, token: TokenSet) -> None:
        self._items[key] = token
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        self._items.pop(key, None)


class _OAuthBase:
    """What the three OAuth providers share: the client, the client secret, the form basics."""

    per_request = True

    def __init__(
        self,
        upstream: Upstream,
        oauth: OAuthClient,
        secrets: SecretSource | None,
        environ: Mapping[str, str],
    ) -> None:
        self._upstream = upstream
        self._oauth = oauth
        self._secrets = secrets
        self._environ = environ
        self._locks = _KeyedLocks()
        self._cache = _TokenCache()

    @property
    def name(self) -> str:
        """The upstream's name."""
        return self._upstream.name

    async def _fresh(self, key: str, load: Callable[[], Awaitable[TokenSet]]) -> TokenSet:
        """The cached token for `key`, or a new one from `load` (one load per key at a time)."""
        token = self._cache.get(key)
        if token is None or not token.fresh(self._oauth.clock()):
            async with self._locks.hold(key):
                # Whoever waited for the lock finds the token the holder loaded.
                token = self._cache.get(key)
                if token is None or not token.fresh(self._oauth.clock()):
                    token = await load()
                    self._cache.put(key, token)
        return token

    async def _client_secret(self) -> str | None:
        try:
            return await client_secret(self._upstream, self._environ, self._secrets)
        except OAuthError as exc:
            logger.warning("%s", exc)
            raise UpstreamUnavailable(self.name) from None

    def _base_form(self) -> dict[str, str]:
        auth = self._upstream.auth
        form: dict[str, str] = {}
        resource = auth.resource or self._upstream.url
        if resource:
            form["resource"] = resource  # RFC 8707: this token is for this upstream only
        if auth.scope:
            form["scope"] = auth.scope
        if auth.audience:
            form["audience"] = auth.audience
        return form

    async def _token(self, form: Mapping[str, str]) -> TokenSet:
        """Ask the token endpoint, with client authentication; OAuthError on refusal or failure."""
        server = await self._oauth.auth_server(self._upstream)
        secret = await self._client_secret()
        body = await self._oauth.request_token(server, form, self._upstream.auth.client_id, secret)
        return TokenSet.from_response(body, self._oauth.clock())

    def _header(self, token: TokenSet) -> dict[str, str]:
        return header_for(self._upstream, token.access_token)


class ClientCredentials(_OAuthBase):
    """`oauth_client_credentials`: the gateway's own token, one per upstream, cached until expiry."""

    _KEY = ""

    async def headers(self, principal_key: str | None) -> dict[str, str]:
        """The gateway's bearer token (whoever the call is for).

        Raises:
            UpstreamUnavailable: no token could be had.
        """
        return self._header(await self._fresh(self._KEY, self._fetch))

    async def _fetch(self) -> TokenSet:
        try:
            return await self._token({"grant_type": "client_credentials", **self._base_form()})
        except OAuthError as exc:
            logger.warning("upstream %s: no client-credentials token: %s", self.name, exc)
            self._oauth.forget(self._upstream)
            raise UpstreamUnavailable(self.name) from None

    async def on_unauthorized(self, principal_key: str | None) -> None:
        """Drop the cached token: the next request fetches a new one."""
        self._cache.drop(self._KEY)

    def refused(self, principal_key: str | None) -> GatewayError:
        """Even a fresh token is refused: the upstream is unavailable to the gateway."""
        return UpstreamUnavailable(self.name)


class TokenExchangeCredentials(_OAuthBase):
    """`token_exchange` (RFC 8693): the caller's subject token exchanged for an upstream token.

    Calls made for nobody (catalog sync) carry no credential: there is no identity to
    exchange. Tokens are cached per principal until shortly before they expire.
    """

    def __init__(
        self,
        upstream: Upstream,
        oauth: OAuthClient,
        secrets: SecretSource | None,
        environ: Mapping[str, str],
        subject_token_for: SubjectTokenSource | None,
    ) -> None:
        super().__init__(upstream, oauth, secrets, environ)
        self._subject_token_for = subject_token_for

    async def headers(self, principal_key: str | None) -> dict[str, str]:
        """The exchanged token of `principal_key` ({} for nobody).

        Raises:
            UpstreamAuthorizationRequired: there is no subject token for the principal, or the
                identity provider refused to exchange it.
            UpstreamUnavailable: the exchange failed otherwise.
        """
        if principal_key is None:
            return {}
        return self._header(await self._fresh(principal_key, lambda: self._exchange(principal_key)))

    async def _exchange(self, principal_key: str) -> TokenSet:
        subject = None if self._subject_token_for is None else await self._subject_token_for(principal_key)
        if not subject:
            raise UpstreamAuthorizationRequired(self.name)
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            **self._base_form(),
        }
        try:
            return await self._token(form)
        except OAuthError as exc:
            logger.warning("upstream %s: token exchange failed: %s", self.name, exc)
            if exc.error in ("invalid_grant", "invalid_target", "unauthorized_client", "invalid_scope"):
                raise UpstreamAuthorizationRequired(self.name) from None
            raise UpstreamUnavailable(self.name) from None

    async def on_unauthorized(self, principal_key: str | None) -> None:
        """Drop the principal's cached token: the next request exchanges again."""
        if principal_key is not None:
            self._cache.drop(principal_key)

    def refused(self, principal_key: str | None) -> GatewayError:
        """A freshly exchanged token is refused: the principal is not authorized there."""
        return UpstreamAuthorizationRequired(self.name)


class AuthorizationCodeCredentials(_OAuthBase):
    """`oauth_authorization_code`: each user's own upstream token, from the vault.

    A user without one gets `UpstreamAuthorizationRequired` carrying the connect URL. An
    expired token is refreshed (the new refresh token replaces the old, RFC 6749 §6 / OAuth
    2.1 rotation) under a per-user lock, so one refresh token is never spent twice.
    """

    def __init__(
        self,
        upstream: Upstream,
        oauth: OAuthClient,
        secrets: SecretSource | None,
        environ: Mapping[str, str],
        vault: UserTokenVault,
        connect_url: str,
    ) -> None:
        super().__init__(upstream, oauth, secrets, environ)
        self._vault = vault
        self._connect_url = connect_url

    async def headers(self, principal_key: str | None) -> dict[str, str]:
        """The user's token for the upstream ({} for nobody).

        Raises:
            UpstreamAuthorizationRequired: the user has not connected (or their grant ended).
            UpstreamUnavailable: the refresh failed for another reason.
        """
        if principal_key is None:
            return {}
        subject = vault_subject(principal_key)
        return self._header(await self._fresh(subject, lambda: self._load(subject)))

    async def _load(self, subject: str) -> TokenSet:
        try:
            payload = await self._vault.get_user_token(subject, self.name)
            token = None if payload is None else TokenSet.from_json(payload)
        except ValueError:  # VaultError, or a payload that is not ours
            logger.warning("upstream %s: a stored user token cannot be opened; it is dropped", self.name)
            await self._vault.delete_user_token(subject, self.name)
            token = None
        if token is None:
            raise self.refused(subject)
        if token.fresh(self._oauth.clock()):
            return token
        if token.refresh_token is None:
            await self._vault.delete_user_token(subject, self.name)
            raise self.refused(subject)
        return await self._refresh(subject, token.refresh_token)

    async def _refresh(self, subject: str, refresh_token: str) -> TokenSet:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **self._base_form()}
        form.pop("audience", None)
        try:
            server = await self._oauth.auth_server(self._upstream)
            secret = await self._client_secret()
            body = await self._oauth.request_token(server, form, self._upstream.auth.client_id, secret)
            token = TokenSet.from_response(body, self._oauth.clock(), previous_refresh=refresh_token)
        except OAuthError as exc:
            logger.warning("upstream %s: refreshing a user token failed: %s", self.name, exc)
            if exc.error in ("invalid_grant", "unauthorized_client"):
                await self._vault.delete_user_token(subject, self.name)
                raise self.refused(subject) from None
            raise UpstreamUnavailable(self.name) from None
        await self._vault.put_user_token(subject, self.name, token.to_json())
        return token

    async def on_unauthorized(self, principal_key: str | None) -> None:
        """The upstream refused the user's token: refresh it on the next request, or forget it."""
        if principal_key is None:
            return
        subject = vault_subject(principal_key)
        async with self._locks.hold(subject):
            self._cache.drop(subject)
            try:
                payload = await self._vault.get_user_token(subject, self.name)
                token = None if payload is None else TokenSet.from_json(payload)
            except ValueError:
                token = None
            if token is None or token.refresh_token is None:
                await self._vault.delete_user_token(subject, self.name)
                return
            stale = TokenSet(token.access_token, 0.0, token.refresh_token, token.scope)
            await self._vault.put_user_token(subject, self.name, stale.to_json())

    def refused(self, principal_key: str | None) -> GatewayError:
        """The user must connect (again): the error carries where."""
        return UpstreamAuthorizationRequired(self.name, self._connect_url)


class UpstreamCredentials:
    """Builds each upstream's `CredentialProvider`; the app's connector factory asks it.

    `secrets` is the sealed store (None: stored secrets and per-user tokens are unavailable,
    env references still work). `subject_token_for` gives token exchange the caller's subject
    token. `public_url` is the gateway's, the base of connect URLs.
    """

    def __init__(
        self,
        *,
        secrets: SqlSecretStore | None,
        public_url: str,
        policy: UrlPolicy,
        subject_token_for: SubjectTokenSource | None = None,
        environ: Mapping[str, str] | None = None,
        oauth: OAuthClient | None = None,
    ) -> None:
        self.secrets = secrets
        self.public_url = public_url.rstrip("/")
        self.oauth = oauth or OAuthClient(policy)
        self.subject_token_for = subject_token_for
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def connect_url(self, server: str) -> str:
        """Where a user connects their account of `server` (upstream_oauth.py)."""
        return f"{self.public_url}/oauth/upstreams/{quote(server, safe='')}/connect"

    def provider(self, upstream: Upstream) -> CredentialProvider:
        """The provider for `upstream`'s auth type."""
        kind = upstream.auth.type
        if kind == "oauth_client_credentials":
            return ClientCredentials(upstream, self.oauth, self.secrets, self.environ)
        if kind == "token_exchange":
            return TokenExchangeCredentials(
                upstream, self.oauth, self.secrets, self.environ, self.subject_token_for
            )
        if kind == "oauth_authorization_code":
            if self.secrets is None:
                return _Unconfigured(upstream.name)
            return AuthorizationCodeCredentials(
                upstream,
                self.oauth,
                self.secrets,
                self.environ,
                self.secrets,
                self.connect_url(upstream.name),
            )
        return StaticCredentials(upstream, self.environ, self.secrets)


class _Unconfigured:
    """Per-user tokens without a secret store: every request for a user is refused."""

    per_request = True

    def __init__(self, name: str) -> None:
        self._name = name

    async def headers(self, principal_key: str | None) -> dict[str, str]:
        if principal_key is None:
            return {}
        logger.warning("upstream %s: per-user tokens need the secret store (no key ring)", self._name)
        raise UpstreamUnavailable(self._name)

    async def on_unauthorized(self, principal_key: str | None) -> None:
        return None

    def refused(self, principal_key: str | None) -> GatewayError:
        return UpstreamUnavailable(self._name)
