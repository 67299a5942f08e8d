"""authlib grants over tollhouse's stores: authorization code (+ PKCE S256), refresh, client credentials.

authlib drives each request synchronously in a worker thread (see `oauth.py`); whenever a
grant needs a store it hops back to the event loop with `anyio.from_thread.run`, so the stores
stay async and every single-use step (redeeming a code, rotating a refresh token) is still one
conditional database write.

What this adds on top of authlib:

* PKCE is mandatory on every authorization request and only S256 is accepted (OAuth 2.1;
  `plain` and a missing method are refused).
* RFC 8707 resource indicators: the authorization request names one resource (default: the
  gateway's `/mcp`), which must be one of our endpoints (`invalid_target` otherwise); the
  token's `aud` is that resource, and a token request may only repeat it or narrow the gateway
  itself down to one endpoint.
* Refresh tokens rotate on every use (single use, reuse revokes the whole family) and keep
  the family's original expiry, scope and resource.
* A second use of an authorization code is refused and, on this replica, also revokes what
  the first use issued (RFC 6749 §4.1.2).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.from_thread
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc7636 import CodeChallenge

from tollhouse.auth.resources import ResourceSpace
from tollhouse.auth.server.clients import ClientDirectory, OAuthClient
from tollhouse.auth.tokens import IssuedToken, TokenIssuer
from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.models import AuthCode, RefreshGrant, User

__all__ = [
    "AuthorizationCodeGrant",
    "ClientCredentialsGrant",
    "InvalidTargetError",
    "RedeemedCodes",
    "RefreshTokenGrant",
    "ResourceIndicator",
    "S256CodeChallenge",
    "ServerContext",
    "secret_hash",
]


def secret_hash(value: str) -> str:
    """How codes and refresh tokens are stored: SHA-256 hex (they carry 256 random bits)."""
    return hashlib.sha256(value.encode()).hexdigest()


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707 §2: the requested resource is not one of ours, or not allowed here."""

    error = "invalid_target"


@dataclass
class RedeemedCodes:
    """What each recently redeemed code issued, so a replayed code can revoke it (per replica)."""

    clock: Callable[[], float] = time.time
    keep_seconds: float = 600.0
    max_entries: int = 10_000
    _issued: OrderedDict[str, tuple[float, str | None, str, float]] = field(default_factory=OrderedDict)

    def record(self, code_hash: str, family_id: str | None, jti: str, expires_at: float) -> None:
        """Remember the refresh family and access token a code turned into."""
        self._issued[code_hash] = (self.clock() + self.keep_seconds, family_id, jti, expires_at)
        while len(self._issued) > self.max_entries:
            self._issued.popitem(last=False)

    def take(self, code_hash: str) -> tuple[str | None, str, float] | None:
        """What a code issued, if it was redeemed recently: (family id, jti, access expiry)."""
        now = self.clock()
        while self._issued and next(iter(self._issued.values()))[0] <= now:
            self._issued.popitem(last=False)
        entry = self._issued.pop(code_hash, None)
        return None if entry is None else entry[1:]


@dataclass(frozen=True)
class ServerContext:
    """What the grants and endpoints need from the gateway."""

    public_url: str
    issuer: TokenIssuer
    identity: SqlIdentityStore
    clients: ClientDirectory
    resources: ResourceSpace
    known_scopes: Callable[[], frozenset[str]]
    on_revoke: Callable[[str, float], None]
    access_ttl_seconds: int
    refresh_ttl_seconds: int
    clock: Callable[[], float]
    redeemed: RedeemedCodes
    code_ttl_seconds: int = 60

    @property
    def default_resource(self) -> str:
        """What an authorization request without `resource` is for: the aggregate MCP endpoint."""
        return self.resources.uri("/mcp")

    def narrowed(self, requested: list[str], granted: str) -> str:
        """The audience for a token request's `resource` values under a grant for `granted`.

        Raises:
            InvalidTargetError: more than one value, not ours, or wider than the grant.
        """
        if not requested:
            return granted
        if len(requested) > 1:
            raise InvalidTargetError("Only one 'resource' per request is supported.")
        canonical = self.resources.canonical(requested[0])
        if canonical is None:
            raise InvalidTargetError("The 'resource' is not served by this gateway.")
        if canonical == granted or granted == self.resources.base:
            return canonical
        raise InvalidTargetError("The 'resource' was not granted.")


def run_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call an async store method from authlib's worker thread."""
    return anyio.from_thread.run(fn, *args)


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE, required on every authorization request, S256 only."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: grants.BaseGrant, redirect_uri: object) -> None:
        """Refuse a request without a challenge, and any method but S256."""
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send 'code_challenge' with method S256.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only 'code_challenge_method=S256' is supported.")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge_method(self, authorization_code: object) -> str:
        """Every stored challenge is S256."""
        return "S256"


class ResourceIndicator:
    """RFC 8707 on the authorization endpoint: pick and check the one resource the code is for."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context

    def __call__(self, grant: grants.BaseGrant) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: grants.BaseGrant, result: object) -> None:
        """Set `request.resource`, or refuse with invalid_target (sent to the client's redirect URI)."""
        values = grant.request.payload.datalist.get("resource", [])
        if len(values) > 1:
            raise InvalidTargetError("Only one 'resource' per request is supported.")
        canonical = self.context.resources.canonical(values[0] if values else self.context.default_resource)
        if canonical is None:
            raise InvalidTargetError("The 'resource' is not served by this gateway.")
        grant.request.resource = canonical


@dataclass(frozen=True)
class StoredCode:
    """An authorization code taken from the store, as authlib's AuthorizationCodeMixin."""

    code: AuthCode
    code_challenge: str
    code_challenge_method: str = "S256"

    def get_redirect_uri(self) -> str:
        """The redirect URI the code was issued for."""
        return self.code.redirect_uri

    def get_scope(self) -> str:
        """The scope the user approved."""
        return self.code.scope


@dataclass(frozen=True)
class StoredRefresh:
    """A refresh token from the store, as authlib's TokenMixin (enough of it)."""

    grant: RefreshGrant

    def check_client(self, client: OAuthClient) -> bool:
        """True when the token belongs to `client`."""
        return self.grant.client_id == client.client_id

    def get_scope(self) -> str:
        """The scope of the family."""
        return self.grant.scope


class _Minting:
    """Access tokens (and refresh tokens) for whichever grant is running."""

    request: OAuth2Request
    server: Any

    def generate_token(
        self,
        user: User | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        context: ServerContext = self.server.context
        client: OAuthClient = self.request.client
        if user is not None:
            subject, kind, teams, roles = user.subject, "user", user.teams, user.roles
        else:
            team = client.record.team
            subject, kind, teams, roles = client.client_id, "client", (team,) if team else (), ()
        issued: IssuedToken = context.issuer.mint(
            subject=subject,
            client_id=client.client_id,
            audience=self.request.audience,
            scope=scope or "",
            kind=kind,
            teams=teams,
            roles=roles,
            ttl_seconds=context.access_ttl_seconds,
        )
        self.request.issued = issued
        token: dict[str, Any] = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": context.access_ttl_seconds,
            "scope": issued.scope,
        }
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token


class AuthorizationCodeGrant(_Minting, grants.AuthorizationCodeGrant):  # type: ignore[misc]
    """Authorization code with PKCE; public clients authenticate with `none`."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    @property
    def context(self) -> ServerContext:
        """The server's context."""
        context: ServerContext = self.server.context
        return context

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        """Store the code by hash, bound to client, redirect URI, challenge, resource and user."""
        context = self.context
        run_async(
            context.identity.save_code,
            AuthCode(
                code_hash=secret_hash(code),
                client_id=request.client.client_id,
                subject=request.user.subject,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                resource=request.resource,
                code_challenge=request.payload.data["code_challenge"],
                expires_at=_utc(context.clock() + context.code_ttl_seconds),
            ),
        )

    def query_authorization_code(self, code: str, client: OAuthClient) -> StoredCode | None:
        """Redeem the code (it is gone afterwards, whatever happens next)."""
        context = self.context
        digest = secret_hash(code)
        taken: AuthCode | None = run_async(context.identity.take_code, digest)
        if taken is None:
            self._revoke_replayed(digest)
            return None
        if taken.client_id != client.client_id:
            return None
        self.request.code_hash = digest
        return StoredCode(taken, taken.code_challenge)

    def _revoke_replayed(self, digest: str) -> None:
        issued = self.context.redeemed.take(digest)
        if issued is None:
            return
        family_id, jti, expires_at = issued
        if family_id is not None:
            run_async(self.context.identity.revoke_refresh_family, family_id)
        run_async(self.context.identity.revoke_jti, jti, _utc(expires_at))
        self.context.on_revoke(jti, expires_at)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Nothing: redeeming already deleted it."""

    def authenticate_user(self, authorization_code: StoredCode) -> User | None:
        """The user the code was issued to, unless disabled since."""
        user: User | None = run_async(self.context.identity.get_user, authorization_code.code.subject)
        return None if user is None or user.disabled else user

    def validate_token_request(self) -> None:
        """authlib's checks (client, code, redirect URI, PKCE), then the RFC 8707 resource."""
        super().validate_token_request()
        code: StoredCode = self.request.authorization_code
        self.request.audience = self.context.narrowed(
            self.request.payload.datalist.get("resource", []), code.code.resource
        )
        self.request.refresh_family = None
        self.request.refresh_expires_at = None


class RefreshTokenGrant(_Minting, grants.RefreshTokenGrant):  # type: ignore[misc]
    """Refresh with rotation: each token works once; a second use revokes its family."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def context(self) -> ServerContext:
        """The server's context."""
        context: ServerContext = self.server.context
        return context

    def authenticate_refresh_token(self, refresh_token: str) -> StoredRefresh | None:
        """Look the token up without spending it (the client is checked first)."""
        if len(refresh_token) > 256:
            return None
        found: RefreshGrant | None = run_async(self.context.identity.find_refresh, secret_hash(refresh_token))
        return None if found is None else StoredRefresh(found)

    def validate_token_request(self) -> None:
        """authlib's checks (client, token, scope ⊆ original), then spend the token and check the resource."""
        super().validate_token_request()
        stored: StoredRefresh = self.request.refresh_token
        used, _reused = run_async(self.context.identity.use_refresh, stored.grant.token_hash)
        if used is None:
            # Unknown, expired, revoked, or a replay — in which case the family is now revoked.
            raise InvalidGrantError("The refresh token is no longer valid.")
        self.request.audience = self.context.narrowed(
            self.request.payload.datalist.get("resource", []), used.resource
        )
        self.request.refresh_family = used.family_id
        self.request.refresh_expires_at = used.expires_at.timestamp()
        self.request.code_hash = None

    def authenticate_user(self, refresh_token: StoredRefresh) -> User:
        """The family's user, unless deleted or disabled since."""
        user: User | None = run_async(self.context.identity.get_user, refresh_token.grant.subject)
        if user is None or user.disabled:
            raise InvalidGrantError("The user can no longer sign in.")
        return user

    def revoke_old_credential(self, refresh_token: StoredRefresh) -> None:
        """Nothing: spending it in `validate_token_request` already retired it."""


class ClientCredentialsGrant(_Minting, grants.ClientCredentialsGrant):  # type: ignore[misc]
    """Client credentials for admin-registered confidential clients (machine agents)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_token_request(self) -> None:
        """authlib's checks (client, grant type, known scopes), then scope and resource."""
        super().validate_token_request()
        context: ServerContext = self.server.context
        client: OAuthClient = self.request.client
        granted = client.get_allowed_scope(self.request.payload.scope)
        if granted is None:
            raise InvalidScopeError()
        self.request.granted_scope = granted
        # Without `resource` the token is for the gateway itself, which every endpoint accepts.
        self.request.audience = context.narrowed(
            self.request.payload.datalist.get("resource", []), context.resources.base
        )
        self.request.refresh_family = None
        self.request.refresh_expires_at = None
        self.request.code_hash = None

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """An access token only (RFC 6749 §4.4.3: no refresh token)."""
        token = self.generate_token(scope=self.request.granted_scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER
