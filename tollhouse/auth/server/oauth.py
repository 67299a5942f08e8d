"""authlib's generic OAuth 2 server bound to Starlette and tollhouse's stores.

authlib has no Starlette server integration and its server side is synchronous, so:

* Handlers read and cap the body on the event loop, then build the authlib request objects
  here from plain values — the URI comes from `public_url`, never from the Host header, and
  loopback http passes authlib's transport check by itself (RFC 8252), so no process-wide
  `AUTHLIB_INSECURE_TRANSPORT` is needed.
* `call` runs the authlib entry point in a worker thread (its own capacity limiter, so
  authlib threads waiting on a store can never starve the threads the stores run in); grants
  reach the async stores through `anyio.from_thread.run`.
* authlib returns `(status, body, headers)`; `AuthlibResponse` keeps it until the handler turns
  it into a Starlette response (RFC 9207's `iss` is added to its Location on the way).

Besides the grants, this registers RFC 7591 registration (open, throttled, with our redirect
URI rules) and RFC 7009 revocation (refresh tokens by family, access tokens by `jti`).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientAuthentication,
    InvalidScopeError,
    JsonRequest,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, JsonPayload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import (
    ClientMetadataClaims,
    ClientRegistrationEndpoint,
    InvalidClientMetadataError,
    InvalidRedirectURIError,
)
from authlib.oauth2.rfc9207 import IssuerParameter
from joserfc import jwt
from joserfc.errors import InvalidClaimError, JoseError

from tollhouse.auth.server.clients import OAuthClient, redirect_uri_problem
from tollhouse.auth.server.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
    ResourceIndicator,
    S256CodeChallenge,
    ServerContext,
    StoredRefresh,
    run_async,
    secret_hash,
)
from tollhouse.auth.verifiers import hash_secret
from tollhouse.registry.models import ClientRecord, RefreshGrant

__all__ = ["AuthlibResponse", "FormRequest", "TollhouseAuthorizationServer", "json_request"]

T = TypeVar("T")


class _Payload(BasicOAuth2Payload):  # type: ignore[misc]
    """Request parameters with every value of repeated names kept (RFC 6749 §3.1 refuses repeats)."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        super().__init__(dict(pairs))
        datalist: dict[str, list[str]] = {}
        for key, value in pairs:
            datalist.setdefault(key, []).append(value)
        self._datalist = datalist


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """An authlib request built from parameters already read on the event loop."""

    def __init__(
        self, method: str, uri: str, pairs: Sequence[tuple[str, str]], headers: Mapping[str, str]
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = _Payload(pairs)
        self._form = dict(pairs)
        # Set by the grants as they validate (RFC 8707 resource, minted token, rotation state).
        self.resource: str | None = None
        self.audience: str | None = None
        self.issued: Any = None
        self.granted_scope: str | None = None
        self.refresh_family: str | None = None
        self.refresh_expires_at: float | None = None
        self.code_hash: str | None = None

    @property
    def args(self) -> dict[str, str]:
        """The parameters (authlib reads query and form alike)."""
        return self._form

    @property
    def form(self) -> dict[str, str]:
        """The parameters."""
        return self._form


class _JsonPayload(JsonPayload):  # type: ignore[misc]
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        return self._data


def json_request(uri: str, data: dict[str, Any], headers: Mapping[str, str]) -> Any:
    """An authlib JSON request (client registration)."""
    request = JsonRequest("POST", uri, headers)
    request.payload = _JsonPayload(data)
    return request


@dataclass
class AuthlibResponse:
    """What authlib answered, before it becomes a Starlette response."""

    status_code: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        """The redirect target, if any (RFC 9207's extension rewrites it)."""
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"] + [("Location", value)]


class _Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        self._issuer = issuer

    def get_issuer(self) -> str:
        return self._issuer


class _RegistrationClaims(ClientMetadataClaims):  # type: ignore[misc]
    """RFC 7591 metadata checks, with tollhouse's redirect URI rules (private-use schemes allowed)."""

    def validate_redirect_uris(self) -> None:
        uris = self.get("redirect_uris")
        if uris is None:
            return
        if not isinstance(uris, list) or not 0 < len(uris) <= 20:
            raise InvalidClaimError("redirect_uris")
        if any(redirect_uri_problem(uri) is not None for uri in uris):
            raise InvalidClaimError("redirect_uris")


class _Registration(ClientRegistrationEndpoint):  # type: ignore[misc]
    """RFC 7591 open registration: public or confidential clients, authorization code only."""

    def __init__(self, server: TollhouseAuthorizationServer) -> None:
        super().__init__(server, claims_classes=[_RegistrationClaims])
        self._context = server.context

    def authenticate_token(self, request: Any) -> bool:
        # Open registration (MCP clients register themselves); throttled per address upstream.
        return True

    def get_server_metadata(self) -> dict[str, Any]:
        return {
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "scopes_supported": sorted(self._context.known_scopes()),
        }

    def extract_client_metadata(self, request: Any) -> dict[str, Any]:
        metadata: dict[str, Any] = super().extract_client_metadata(request)
        grants = metadata.setdefault("grant_types", ["authorization_code"])
        metadata.setdefault("response_types", ["code"])
        if "authorization_code" in grants and not metadata.get("redirect_uris"):
            raise InvalidRedirectURIError("'redirect_uris' is required for the authorization code grant.")
        name = metadata.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise InvalidClientMetadataError("'client_name' must be a string of at most 200 characters.")
        # Only what this server acts on is kept and echoed back.
        kept = ("redirect_uris", "token_endpoint_auth_method", "grant_types", "response_types")
        return {k: v for k, v in metadata.items() if k in (*kept, "client_name", "scope")}

    def generate_client_id(self, request: Any) -> str:
        return secrets.token_urlsafe(24)

    def generate_client_info(self, request: Any) -> dict[str, Any]:
        info: dict[str, Any] = super().generate_client_info(request)
        if request.payload.data.get("token_endpoint_auth_method") == "none":
            del info["client_secret"], info["client_secret_expires_at"]
        return info

    def save_client(self, client_info: dict[str, Any], client_metadata: dict[str, Any], request: Any) -> Any:
        secret = client_info.get("client_secret")
        public = client_metadata.get("token_endpoint_auth_method") == "none"
        record = ClientRecord(
            client_id=client_info["client_id"],
            name=f"dcr-{client_info['client_id'][:12]}",
            team=None,
            key_hash=None,
            secret_hash=None if public or secret is None else hash_secret(secret),
            kind="public" if public else "confidential",
            registration="dcr",
            redirect_uris=tuple(client_metadata.get("redirect_uris") or ()),
            grant_types=tuple(client_metadata["grant_types"]),
            client_name=client_metadata.get("client_name"),
        )
        return run_async(self._context.clients.registry.create_client, record)


@dataclass(frozen=True)
class _AccessToken:
    jti: str
    client_id: str | None
    expires_at: float

    def check_client(self, client: OAuthClient) -> bool:
        return self.client_id == client.client_id


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: refresh tokens revoke their family; our JWT access tokens are revoked by `jti`."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def __init__(self, server: TollhouseAuthorizationServer) -> None:
        super().__init__(server)
        self._context = server.context

    def authenticate_token(self, request: Any, client: OAuthClient) -> Any:
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        # Another client's token is ignored, not reported: the answer is 200 either way, so
        # revocation cannot be used to learn whether someone else's token exists.
        if token is None or not token.check_client(client):
            return None
        return token

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        if len(token_string) > 8192:
            return None
        if token_string.count(".") == 2:
            return self._access_token(token_string)
        found: RefreshGrant | None = run_async(self._context.identity.find_refresh, secret_hash(token_string))
        return None if found is None else StoredRefresh(found)

    def _access_token(self, token: str) -> _AccessToken | None:
        try:
            decoded = jwt.decode(token, self._context.issuer.public_keys, algorithms=["ES256"])
        except (JoseError, ValueError, TypeError, KeyError):
            return None
        claims = decoded.claims
        if claims.get("iss") != self._context.issuer.issuer or not isinstance(claims.get("jti"), str):
            return None
        exp = claims.get("exp")
        client_id = claims.get("client_id")
        return _AccessToken(
            jti=claims["jti"],
            client_id=client_id if isinstance(client_id, str) else None,
            expires_at=float(exp) if isinstance(exp, int | float) else self._context.clock(),
        )

    def revoke_token(self, token: Any, request: Any) -> None:
        if isinstance(token, StoredRefresh):
            run_async(self._context.identity.revoke_refresh_family, token.grant.family_id)
            return
        run_async(self._context.identity.revoke_jti, token.jti, datetime.fromtimestamp(token.expires_at, UTC))
        self._context.on_revoke(token.jti, token.expires_at)


class TollhouseAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's AuthorizationServer over the context's stores."""

    def __init__(self, context: ServerContext, *, max_threads: int = 16) -> None:
        super().__init__(scopes_supported=None)
        self.context = context
        self._client_auth = ClientAuthentication(self.query_client)
        self._limiter = anyio.CapacityLimiter(max_threads)
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(), ResourceIndicator(context)])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_endpoint(_Registration(self))
        self.register_endpoint(_Revocation(self))
        self.register_extension(_Issuer(context.public_url))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an authlib entry point in a worker thread."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)

    def query_client(self, client_id: str) -> OAuthClient | None:
        """The active client (registry or CIMD), from the worker thread."""
        if not isinstance(client_id, str):
            return None
        client: OAuthClient | None = run_async(self.context.clients.get, client_id)
        return client

    def validate_requested_scope(self, scope: str | None) -> None:
        """Every requested scope must be one the gateway knows."""
        if scope and not set(scope.split()) <= self.context.known_scopes():
            raise InvalidScopeError()

    def save_token(self, token: dict[str, Any], request: FormRequest) -> None:
        """Persist the refresh token (by hash) in its family; remember what a code issued."""
        context = self.context
        family_id = request.refresh_family
        refresh = token.get("refresh_token")
        if refresh is not None:
            family_id = family_id or secrets.token_urlsafe(16)
            expires_at = request.refresh_expires_at or context.clock() + context.refresh_ttl_seconds
            subject = request.user.subject if request.user is not None else request.client.client_id
            run_async(
                context.identity.save_refresh,
                RefreshGrant(
                    token_hash=secret_hash(refresh),
                    family_id=family_id,
                    client_id=request.client.client_id,
                    subject=subject,
                    scope=token.get("scope") or "",
                    resource=request.audience or context.resources.base,
                    expires_at=datetime.fromtimestamp(expires_at, UTC),
                ),
            )
        if request.code_hash is not None and request.issued is not None:
            context.redeemed.record(
                request.code_hash, family_id, request.issued.jti, request.issued.expires_at
            )

    def create_oauth2_request(self, request: Any) -> Any:
        """Requests are built by the handlers already."""
        return request

    def create_json_request(self, request: Any) -> Any:
        """Requests are built by the handlers already."""
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> AuthlibResponse:
        """Keep authlib's answer for the handler."""
        return AuthlibResponse(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signals."""
