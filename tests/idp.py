"""A minimal identity provider for tests, independent of tollhouse's own authorization server.

External-IdP mode must be tested against an issuer that shares no code with the built-in
one, so this is written from the specs alone: OIDC Discovery and RFC 8414 documents, a JWKS
(an RSA and an EC key, generated with `cryptography`), RFC 7662 introspection behind client
basic auth, and helpers that mint whatever a test needs — valid tokens, and every kind of bad
one (alg `none`, HS256 keyed with the RSA public key, expired, foreign keys, rotated keys).

`running_idp()` binds the port first, so the issuer URL is known before the app is built, and
serves it with `tests.servers.serve`. Requests are counted per endpoint, so tests can prove
that caching and rate limits keep the gateway from hammering the provider.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlencode

import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import loopback_socket, serve

Key = RSAKey | ECKey


def rsa_key(kid: str) -> RSAKey:
    """A fresh RSA-2048 signing key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RSAKey.import_key(private, {"kid": kid, "use": "sig", "alg": "RS256"})


def ec_key(kid: str) -> ECKey:
    """A fresh P-256 signing key."""
    return ECKey.import_key(
        ec.generate_private_key(ec.SECP256R1()), {"kid": kid, "use": "sig", "alg": "ES256"}
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    """A compact JWS built by hand (for tokens a JOSE library would refuse to make)."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{_b64(signature)}"


class TestIdp:
    """The provider's state: keys, opaque tokens, request counts, and switches for failures."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        base_url: str,
        *,
        issuer_path: str = "",
        rfc8414: bool = True,
        client_id: str = "tollhouse-gw",
        client_secret: str = "introspection-secret",  # noqa: S107 - the test provider's own
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url
        self.issuer_path = issuer_path
        self.issuer = base_url + issuer_path
        self.rfc8414 = rfc8414
        self.client_id = client_id
        self.client_secret = client_secret
        self.clock = clock
        self.rsa = rsa_key("rsa-1")
        self.ec = ec_key("ec-1")
        self.published: list[Key] = [self.rsa, self.ec]
        # Raw JWK entries published as they are (e.g. a symmetric key no verifier may take).
        self.extra_jwks: list[dict[str, Any]] = []
        self.requests: Counter[str] = Counter()
        self.opaque: dict[str, dict[str, Any]] = {}
        # Overrides that make the provider misbehave.
        self.advertised_issuer: str | None = None
        self.jwks_uri: str | None = None
        self.down = False
        # Authorization code + PKCE for browser sign-in (the console): the registered client,
        # and who "signs in" at /authorize (this provider has no login page of its own).
        self.app_client_id = "tollhouse-console-app"
        self.app_client_secret: str | None = "console-app-secret"
        self.app_redirect_uris: tuple[str, ...] = ()
        self.signed_in: dict[str, Any] = {"sub": "carol", "roles": ["idp-auditors"]}
        self._codes: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, dict[str, Any]] = {}

    # -- documents ---------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The discovery document."""
        return {
            "issuer": self.advertised_issuer or self.issuer,
            "jwks_uri": self.jwks_uri or f"{self.base_url}/jwks.json",
            "introspection_endpoint": f"{self.base_url}/introspect",
            "token_endpoint": f"{self.base_url}/token",
            "authorization_endpoint": f"{self.base_url}/authorize",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def jwks(self) -> dict[str, Any]:
        """The published public keys."""
        return {"keys": [k.as_dict(private=False) for k in self.published] + self.extra_jwks}

    # -- keys --------------------------------------------------------------------------------

    def rotate(self, kid: str = "rsa-2") -> RSAKey:
        """Publish a new RSA key (the old ones stay published) and return it."""
        key = rsa_key(kid)
        self.published.append(key)
        return key

    # -- tokens ------------------------------------------------------------------------------

    def claims(self, audience: str | list[str], **overrides: Any) -> dict[str, Any]:
        """Plausible access-token claims for `audience`; `overrides` replace (None removes)."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": audience,
            "azp": "agent-app",
            "scope": "mcp a2a",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(8),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        claims: dict[str, Any],
        *,
        key: Key | None = None,
        alg: str | None = None,
        header: dict[str, Any] | None = None,
    ) -> str:
        """A signed JWT (RS256 with the first RSA key unless told otherwise)."""
        key = key or self.rsa
        alg = alg or ("ES256" if isinstance(key, ECKey) else "RS256")
        full = {"alg": alg, "kid": key.kid, "typ": "at+jwt"} | (header or {})
        full = {k: v for k, v in full.items() if v is not None}
        return jwt.encode(full, claims, key, algorithms=[alg])

    def unsigned(self, claims: dict[str, Any]) -> str:
        """`alg: none` with an empty signature."""
        return compact({"alg": "none", "typ": "JWT"}, claims, None)

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """HS256 keyed with the RSA public key's PEM: the classic algorithm-confusion forgery."""
        pem = self.rsa.as_pem(private=False)
        header = {"alg": "HS256", "kid": self.rsa.kid, "typ": "at+jwt"}
        return compact(header, claims, lambda data: hmac.new(pem, data, hashlib.sha256).digest())

    def register_opaque(self, *, active: bool = True, **claims: Any) -> str:
        """A new opaque token and what introspection says about it."""
        token = "opq_" + secrets.token_urlsafe(24)
        self.opaque[token] = {"active": active, **claims} if active else {"active": False}
        return token

    # -- the app -----------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The provider's HTTP endpoints."""

        def unavailable() -> Response | None:
            return Response(b"down", status_code=503) if self.down else None

        async def metadata(request: Request) -> Response:
            self.requests["discovery"] += 1
            return unavailable() or JSONResponse(self.metadata())

        async def jwks(request: Request) -> Response:
            self.requests["jwks"] += 1
            return unavailable() or JSONResponse(self.jwks())

        async def introspect(request: Request) -> Response:
            self.requests["introspect"] += 1
            if self.down:
                return Response(b"down", status_code=503)
            if not self._client_authenticated(request.headers.get("authorization", "")):
                return JSONResponse(
                    {"error": "invalid_client"}, status_code=401, headers={"WWW-Authenticate": "Basic"}
                )
            form = await request.form()
            token = form.get("token")
            answer = self.opaque.get(token, {"active": False}) if isinstance(token, str) else None
            if answer is None:
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            return JSONResponse(answer)

        routes = [
            Route(self.issuer_path + "/.well-known/openid-configuration", metadata),
            Route("/jwks.json", jwks),
            Route("/introspect", introspect, methods=["POST"]),
            Route("/authorize", self._authorize, methods=["GET"]),
            Route("/token", self._token, methods=["POST"]),
        ]
        if self.rfc8414:
            routes.append(Route("/.well-known/oauth-authorization-server" + self.issuer_path, metadata))
        return Starlette(routes=routes)

    async def _authorize(self, request: Request) -> Response:
        """Authorization code with PKCE, signing in `self.signed_in` without asking anyone."""
        self.requests["authorize"] += 1
        params = request.query_params
        redirect_uri = params.get("redirect_uri", "")
        if params.get("client_id") != self.app_client_id or redirect_uri not in self.app_redirect_uris:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        self._codes[code] = {
            "challenge": params["code_challenge"],
            "redirect_uri": redirect_uri,
            "resource": params.get("resource"),
            "claims": dict(self.signed_in),
        }
        location = f"{redirect_uri}?{urlencode({'code': code, 'state': params.get('state', '')})}"
        return Response(status_code=302, headers={"Location": location})

    async def _token(self, request: Request) -> Response:
        self.requests["token"] += 1
        form = await request.form()
        if self.app_client_secret is not None and not self._authenticated(
            request.headers.get("authorization", ""), self.app_client_id, self.app_client_secret
        ):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = form.get("grant_type")
        if grant == "authorization_code":
            pending = self._codes.pop(str(form.get("code", "")), None)
            verifier = str(form.get("code_verifier", ""))
            challenge = _b64(hashlib.sha256(verifier.encode()).digest())
            if (
                pending is None
                or pending["challenge"] != challenge
                or pending["redirect_uri"] != form.get("redirect_uri")
            ):
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
        elif grant == "refresh_token":
            pending = self._refresh.pop(str(form.get("refresh_token", "")), None)
            if pending is None:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        refresh = secrets.token_urlsafe(16)
        self._refresh[refresh] = pending
        audience = pending["resource"] or self.issuer
        token = self.mint(self.claims(audience, scope="openid", azp=self.app_client_id, **pending["claims"]))
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": 300, "refresh_token": refresh}
        )

    def _client_authenticated(self, header: str) -> bool:
        return self._authenticated(header, self.client_id, self.client_secret)

    def _authenticated(self, header: str, client_id_expected: str, secret_expected: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        client_id, _, secret = decoded.partition(":")
        return hmac.compare_digest(unquote(client_id), client_id_expected) and hmac.compare_digest(
            unquote(secret), secret_expected
        )


@asynccontextmanager
async def running_idp(**options: Any) -> AsyncIterator[TestIdp]:
    """A `TestIdp` served on a loopback port for the duration of the block."""
    sock = loopback_socket()
    idp = TestIdp(f"http://127.0.0.1:{sock.getsockname()[1]}", **options)
    async with serve(idp.app(), sock=sock):
        yield idp
