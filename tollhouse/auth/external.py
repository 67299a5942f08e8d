"""External identity providers: trust another issuer's JWTs, or introspect its opaque tokens.

Organisations already run an identity provider (Keycloak, Entra ID, Okta, Auth0); tollhouse
then acts as a plain resource server for it. An `ExternalIssuer` learns the provider's keys
from its discovery document (RFC 8414, then OpenID Connect Discovery, with RFC 8414's path
insertion) and verifies JWT access tokens with the same strict `JwtVerifier` as the built-in
issuer: allow-listed asymmetric algorithms only, exact issuer, an audience that names the
requested resource (or the gateway, or an audience the operator adds), expiry with a small skew.

Keys are fetched ahead of time (`start`, `refresh`, the `run` loop), so verification stays
synchronous and in memory. An unknown `kid` triggers one refetch, rate-limited so a flood of
tokens with invented kids cannot turn the gateway into a load generator against the provider;
a failed refetch keeps the last good key set. Every URL learned from the provider's document
(`jwks_uri`, `introspection_endpoint`) goes through the SSRF guard: the issuer is chosen by an
admin, but the document's contents are the provider's word.

An `Introspector` (RFC 7662) handles opaque tokens: it asks the provider, checks the answer
like a JWT's claims, caches positive answers briefly and negative ones for a few seconds, and
lets one request per token go out at a time. A provider that cannot be reached means 401 for
its tokens, never a 500 and never a crash at start. Tokens never reach a log line.

Claims are mapped by configuration, because providers disagree on where things live: groups
in `groups` (Keycloak, Okta) or GUIDs in `groups` (Entra), app roles in `roles`, Keycloak's
realm roles in `realm_access.roles`, Auth0's in namespaced claims. Provider roles become
tollhouse admin roles only through an explicit `role_map`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import anyio.abc
import orjson
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, KeySet, RSAKey
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from tollhouse.auth.principal import Principal
from tollhouse.auth.resources import ResourceSpace
from tollhouse.auth.ssrf import (
    FetchError,
    PinnedResolver,
    UnsafeUrlError,
    UrlPolicy,
    fetch_json,
    resolve_safe,
)
from tollhouse.auth.tokens import ALLOWED_ALGORITHMS, ROLE_NAMES, ClaimMapping, InvalidTokenError, JwtVerifier
from tollhouse.auth.verifiers import TokenVerifier

__all__ = [
    "ExternalIssuer",
    "ExternalIssuerConfig",
    "Introspector",
    "build_external_verifiers",
    "discovery_urls",
    "start_all",
]

logger = logging.getLogger("tollhouse.auth.external")

_DISCOVERY_MAX_BYTES = 64 * 1024
_JWKS_MAX_BYTES = 256 * 1024
_INTROSPECTION_MAX_BYTES = 64 * 1024
_MAX_KEYS = 64
_MIN_RSA_BITS = 2048
_MAX_BACKOFF_SECONDS = 60.0
_MAX_TOKEN_CHARS = 16 * 1024
_MAPPED_CACHE_SIZE = 4096


def _is_loopback_host(host: str) -> bool:
    host = host.lower().strip("[]").rstrip(".")
    return host in ("localhost", "::1") or host.endswith(".localhost") or host.startswith("127.")


class ExternalIssuerConfig(BaseModel):
    """One trusted external identity provider (an item of `auth.external_issuers`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str
    # Default: RFC 8414 then OIDC discovery, derived from `issuer` (see `discovery_urls`).
    discovery_url: str | None = None
    # Audiences accepted besides our own resource URIs and public URL (e.g. Entra's `api://…`).
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    subject_claim: str = "sub"
    client_id_claims: tuple[str, ...] = ("client_id", "azp", "cid", "appid")
    scope_claims: tuple[str, ...] = ("scope", "scp")
    team_claims: tuple[str, ...] = ("groups",)
    role_claims: tuple[str, ...] = ("roles",)
    # Provider value (a role or group) -> tollhouse admin role; nothing else grants a role.
    role_map: dict[str, str] = Field(default_factory=dict)
    # Provider group -> team; a mapped group is a team even when `team_prefix` would drop it.
    team_map: dict[str, str] = Field(default_factory=dict)
    # When set, only groups starting with it are teams, named without it ("/" for Keycloak paths).
    team_prefix: str = ""
    # Only groups named in `team_map` are teams (Entra puts every group's GUID in `groups`).
    teams_from_map_only: bool = False
    # RFC 9068 `typ` to insist on (e.g. "at+jwt"), so ID tokens cannot pass for access tokens.
    require_typ: str | None = None
    introspection_endpoint: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    allow_loopback_http: bool = False
    allow_private: bool = False
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_refetch_interval_seconds: float = Field(default=30.0, gt=0)
    jwks_refresh_seconds: float = Field(default=3600.0, gt=0)
    fetch_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [a for a in value if a not in ALLOWED_ALGORITHMS]
        if unknown or not value:
            raise ValueError(f"algorithms must be a non-empty subset of {list(ALLOWED_ALGORITHMS)}")
        return value

    @field_validator("role_map")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value.values()) - ROLE_NAMES)
        if unknown:
            raise ValueError(f"role_map values must be among {sorted(ROLE_NAMES)}, got {unknown}")
        return value

    @model_validator(mode="after")
    def _urls(self) -> ExternalIssuerConfig:
        self._check_url(self.issuer, "issuer")
        for name in ("discovery_url", "introspection_endpoint"):
            value = getattr(self, name)
            if value is not None:
                self._check_url(value, name)
        if self.client_id is not None and not self.client_secret_env:
            raise ValueError("client_id (introspection) needs client_secret_env")
        return self

    def _check_url(self, value: str, name: str) -> None:
        parts = urlsplit(value)
        if parts.query or parts.fragment or not parts.hostname or parts.username or parts.password:
            raise ValueError(f"{name} must be an absolute URL without query, fragment or credentials")
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self.allow_loopback_http and _is_loopback_host(parts.hostname):
            return
        raise ValueError(f"{name} must be https (plain http only to loopback with allow_loopback_http)")

    @property
    def policy(self) -> UrlPolicy:
        """What fetches for this provider may reach."""
        return UrlPolicy(allow_loopback_http=self.allow_loopback_http, allow_private=self.allow_private)


def discovery_urls(issuer: str) -> list[str]:
    """Where to look for an issuer's metadata, in order (RFC 8414 §3.1, then OIDC Discovery)."""
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if not path:
        return [
            origin + "/.well-known/oauth-authorization-server",
            origin + "/.well-known/openid-configuration",
        ]
    return [
        origin + "/.well-known/oauth-authorization-server" + path,
        origin + "/.well-known/openid-configuration" + path,
        origin + path + "/.well-known/openid-configuration",
    ]


class _ClaimMapper:
    """Turns verified claims (a JWT's payload or an introspection answer) into principal fields."""

    def __init__(self, config: ExternalIssuerConfig) -> None:
        self._config = config

    def teams(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        config = self._config
        teams: set[str] = set()
        for group in _strings(claims, config.team_claims):
            if group in config.team_map:
                teams.add(config.team_map[group])
            elif config.teams_from_map_only:
                continue
            elif not config.team_prefix:
                teams.add(group)
            elif group.startswith(config.team_prefix) and len(group) > len(config.team_prefix):
                teams.add(group[len(config.team_prefix) :])
        return tuple(sorted(teams))

    def roles(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        config = self._config
        values = _strings(claims, config.role_claims + config.team_claims)
        return tuple(sorted({config.role_map[v] for v in values if v in config.role_map}))

    def apply(self, principal: Principal, claims: Mapping[str, Any]) -> Principal:
        config = self._config
        client_id = _first_str(claims, config.client_id_claims)
        return replace(
            principal,
            client_id=client_id,
            scopes=tuple(sorted(set(_strings(claims, config.scope_claims, split=True)))),
            teams=self.teams(claims),
            roles=self.roles(claims),
            kind=_kind(claims, principal.subject, client_id),
        )


def _kind(claims: Mapping[str, Any], subject: str, client_id: str | None) -> str:
    """Whether the token is a machine's ("client": client credentials) or a person's ("user").

    Entra marks app-only tokens with `idtyp: app`, Auth0 with `gty: client-credentials` (and a
    subject of `<client id>@clients`), Okta makes the subject the client id.
    """
    if claims.get("idtyp") == "app" or claims.get("gty") == "client-credentials":
        return "client"
    if client_id and subject in (client_id, client_id + "@clients"):
        return "client"
    return "user"


class ExternalIssuer:
    """A `TokenVerifier` for the JWT access tokens of one external issuer."""

    def __init__(
        self,
        config: ExternalIssuerConfig,
        resources: ResourceSpace,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.config = config
        self.issuer = config.issuer
        self.metadata: dict[str, Any] | None = None
        # Why the last fetch failed (no secrets, no bodies), for operators; None after success.
        self.last_error: str | None = None
        self._resources = resources
        self._audiences = frozenset(config.audiences)
        self._clock = clock
        self._sleep = sleep
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = anyio.Lock()
        self._mapper = _ClaimMapper(config)
        self._mapped: OrderedDict[bytes, Principal] = OrderedDict()
        # Teams, roles, scopes and client id are mapped here (nested claims, prefixes); the
        # verifier checks the token and reads the subject.
        self.jwt = JwtVerifier(
            issuer=config.issuer,
            keys=self._current_keys,
            accepted_audiences=self._accepted_audiences,
            mapping=ClaimMapping(
                subject=config.subject_claim, client_id=(), scopes=(), teams=(), roles=(), role_map={}
            ),
            algorithms=config.algorithms,
            leeway_seconds=config.leeway_seconds,
            require_typ=config.require_typ,
            clock=clock,
        )

    @property
    def loaded(self) -> bool:
        """Whether keys are available (tokens of this issuer are refused until they are)."""
        return self._keys is not None

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently trusted."""
        return self._kids

    def _current_keys(self) -> KeySet:
        return self._keys if self._keys is not None else KeySet([])

    def _accepted_audiences(self, resource: str) -> frozenset[str]:
        return self._resources.accepted_audiences(resource) | self._audiences

    async def verify(self, token: str, resource: str) -> Principal:
        """The principal of a valid access token of this issuer for `resource`.

        Raises:
            InvalidTokenError: keys not (yet) available, unknown key, or anything `JwtVerifier` refuses.
        """
        if self._keys is None:
            await self._attempt(discovery=self.metadata is None)
            if self._keys is None:
                raise InvalidTokenError("keys_unavailable")
        kid = _unverified_kid(token)
        if kid is not None and kid not in self._kids:
            await self._attempt(discovery=False)
            if kid not in self._kids:
                raise InvalidTokenError("unknown_kid")
        principal = self.jwt.verify(token, resource)
        digest = hashlib.sha256(token.encode()).digest()
        mapped = self._mapped.get(digest)
        if mapped is None:
            # The signature has just been checked, so the payload read here is the signed one.
            mapped = self._mapper.apply(principal, _payload(token))
            self._mapped[digest] = mapped
            if len(self._mapped) > _MAPPED_CACHE_SIZE:
                self._mapped.popitem(last=False)
        return mapped

    async def start(self) -> bool:
        """Load discovery and keys now; False (and a warning) if the provider cannot be used yet."""
        async with self._lock:
            self._attempted_at = self._clock()
            return await self._load(discovery=True)

    async def refresh(self, *, discovery: bool = False) -> bool:
        """Refetch the keys (and the discovery document if asked); the old keys stay on failure."""
        async with self._lock:
            self._attempted_at = self._clock()
            return await self._load(discovery=discovery or self.metadata is None)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the keys fresh: retry with backoff while unloaded, refresh periodically once loaded."""
        task_status.started()
        backoff = 1.0
        while True:
            if self._keys is None:
                await self._sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
                await self.refresh(discovery=True)
                continue
            backoff = 1.0
            age = self._clock() - (self._fetched_at or 0.0)
            await self._sleep(max(self.config.jwks_refresh_seconds - age, 1.0))
            await self.refresh(discovery=True)

    async def _attempt(self, *, discovery: bool) -> None:
        """A fetch from the request path, at most once per `jwks_refetch_interval_seconds`."""
        async with self._lock:
            now = self._clock()
            interval = self.config.jwks_refetch_interval_seconds
            if self._attempted_at is not None and now - self._attempted_at < interval:
                return
            self._attempted_at = now
            await self._load(discovery=discovery or self.metadata is None)

    async def _load(self, *, discovery: bool) -> bool:
        try:
            if discovery or self.metadata is None:
                self.metadata = await self._discover()
            jwks_uri = self.metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError("the discovery document has no jwks_uri")
            document, _ = await fetch_json(
                jwks_uri,
                self.config.policy,
                max_bytes=_JWKS_MAX_BYTES,
                timeout_seconds=self.config.fetch_timeout_seconds,
            )
            keys = _public_keys(document)
        except (FetchError, UnsafeUrlError) as exc:
            self.last_error = str(exc)
            logger.warning(
                "external issuer %s: cannot load keys (%s); %s",
                self.issuer,
                exc,
                "keeping the previous keys" if self._keys is not None else "its tokens are refused",
            )
            return False
        self._keys = keys
        self._kids = frozenset(k.kid for k in keys if k.kid is not None)
        self._fetched_at = self._clock()
        self.last_error = None
        return True

    async def _discover(self) -> dict[str, Any]:
        candidates = [self.config.discovery_url] if self.config.discovery_url else discovery_urls(self.issuer)
        failures: list[str] = []
        for url in candidates:
            try:
                document, _ = await fetch_json(
                    url,
                    self.config.policy,
                    max_bytes=_DISCOVERY_MAX_BYTES,
                    timeout_seconds=self.config.fetch_timeout_seconds,
                )
            except FetchError as exc:
                failures.append(f"{url}: {exc}")
                continue
            if not isinstance(document, dict):
                raise FetchError(f"{url}: the discovery document is not a JSON object")
            # RFC 8414 §3.3 / OIDC Discovery §4.3: a document for another issuer is refused.
            if document.get("issuer") != self.issuer:
                raise FetchError(f"{url}: the discovery document names another issuer")
            return document
        raise FetchError("no discovery document: " + "; ".join(failures))


def _public_keys(document: Any) -> KeySet:
    """The usable public signing keys of a JWKS; unusable entries are skipped, not fatal."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("the JWKS is not a key set")
    keys = []
    for entry in document["keys"][:_MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        # Symmetric keys are never taken from a provider: anyone reading the JWKS could sign.
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        try:
            key = JWKRegistry.import_key(entry)
            public = JWKRegistry.import_key(key.as_dict(private=False))
        except (JoseError, ValueError, TypeError, KeyError):
            continue
        if isinstance(public, RSAKey) and public.raw_value.key_size < _MIN_RSA_BITS:
            continue
        keys.append(public)
    if not keys:
        raise FetchError("the JWKS has no usable signing keys")
    return KeySet(keys)


def _b64json(segment: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None


def _unverified_kid(token: str) -> str | None:
    """The header's `kid`, unverified: only to decide whether to refetch keys."""
    if len(token) > _MAX_TOKEN_CHARS:
        return None
    header = _b64json(token.split(".", 1)[0])
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _payload(token: str) -> dict[str, Any]:
    parts = token.split(".")
    claims = _b64json(parts[1]) if len(parts) == 3 else None
    return claims if isinstance(claims, dict) else {}


def _lookup(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; a dotted name that is not itself a claim walks nested objects."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _first_str(claims: Mapping[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        value = _lookup(claims, name)
        if isinstance(value, str) and value:
            return value
    return None


def _strings(claims: Mapping[str, Any], names: Iterable[str], *, split: bool = False) -> list[str]:
    out: list[str] = []
    for name in names:
        value = _lookup(claims, name)
        if isinstance(value, str):
            out.extend(value.split() if split else [value])
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


class Introspector:
    """A `TokenVerifier` for opaque tokens: RFC 7662 introspection at the provider, cached."""

    def __init__(
        self,
        config: ExternalIssuerConfig,
        issuer: ExternalIssuer,
        client_secret: str,
        resources: ResourceSpace,
        *,
        clock: Callable[[], float] = time.time,
        positive_ttl_seconds: float = 60.0,
        negative_ttl_seconds: float = 5.0,
        failure_backoff_seconds: float = 1.0,
        max_concurrency: int = 16,
        cache_size: int = 10_000,
    ) -> None:
        if config.client_id is None:
            raise ValueError("introspection needs client_id")
        self.config = config
        self.requests = 0
        self._issuer = issuer
        self._resources = resources
        self._audiences = frozenset(config.audiences)
        self._mapper = _ClaimMapper(config)
        self._clock = clock
        self._positive_ttl = positive_ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._failure_backoff = failure_backoff_seconds
        self._unavailable_until = 0.0
        self._limiter = anyio.Semaphore(max_concurrency)
        # digest -> (claims, or None for "inactive"; cached until)
        self._cache: OrderedDict[bytes, tuple[dict[str, Any] | None, float]] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: dict[bytes, anyio.Event] = {}
        # RFC 6749 §2.3.1: id and secret are form-encoded before going into the Basic header.
        pair = f"{quote(config.client_id, safe='')}:{quote(client_secret, safe='')}"
        self._authorization = "Basic " + base64.b64encode(pair.encode()).decode()

    async def verify(self, token: str, resource: str) -> Principal:
        """The principal of an active opaque token for `resource`.

        Raises:
            InvalidTokenError: inactive, for another issuer or audience, expired, or the
                provider cannot be asked right now (`introspection_unavailable`).
        """
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidTokenError("malformed")
        claims = await self._claims(hashlib.sha256(token.encode()).digest(), token)
        if claims is None:
            raise InvalidTokenError("inactive")
        if "iss" in claims and claims["iss"] != self.config.issuer:
            raise InvalidTokenError("issuer")
        now = self._clock()
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp + self.config.leeway_seconds <= now:
            raise InvalidTokenError("expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf - self.config.leeway_seconds > now:
            raise InvalidTokenError("not_yet_valid")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        accepted = self._resources.accepted_audiences(resource) | self._audiences
        if not accepted.intersection(a for a in audiences if isinstance(a, str)):
            raise InvalidTokenError("audience")
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        client_id = _first_str(claims, self.config.client_id_claims)
        subject = _first_str(claims, (self.config.subject_claim,)) or client_id
        if subject is None:
            raise InvalidTokenError("claims")
        exp = claims.get("exp")
        jti = claims.get("jti")
        base = Principal(
            subject=subject,
            issuer=self.config.issuer,
            token_id=jti if isinstance(jti, str) else None,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )
        return self._mapper.apply(base, claims)

    async def _claims(self, digest: bytes, token: str) -> dict[str, Any] | None:
        while True:
            cached = self._cache.get(digest)
            if cached is not None and cached[1] > self._clock():
                return cached[0]
            pending = self._inflight.get(digest)
            if pending is None:
                break
            # The same token is being introspected already: share that answer.
            await pending.wait()
            if digest not in self._cache:
                raise InvalidTokenError("introspection_unavailable")
        if self._clock() < self._unavailable_until:
            raise InvalidTokenError("introspection_unavailable")
        done = anyio.Event()
        self._inflight[digest] = done
        try:
            async with self._limiter:
                claims = await self._introspect(token)
        except (FetchError, UnsafeUrlError) as exc:
            self._unavailable_until = self._clock() + self._failure_backoff
            logger.warning("introspection at %s failed: %s", self.config.issuer, exc)
            raise InvalidTokenError("introspection_unavailable") from None
        finally:
            del self._inflight[digest]
            done.set()
        self._remember(digest, claims)
        return claims

    def _remember(self, digest: bytes, claims: dict[str, Any] | None) -> None:
        now = self._clock()
        if claims is None:
            until = now + self._negative_ttl
        else:
            until = now + self._positive_ttl
            exp = claims.get("exp")
            if isinstance(exp, int | float):
                until = min(until, float(exp))
        self._cache[digest] = (claims, until)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _endpoint(self) -> str:
        if self.config.introspection_endpoint is not None:
            return self.config.introspection_endpoint
        if self._issuer.metadata is None:
            await self._issuer._attempt(discovery=True)
        endpoint = (self._issuer.metadata or {}).get("introspection_endpoint")
        if not isinstance(endpoint, str):
            raise FetchError("the provider advertises no introspection_endpoint")
        return endpoint

    async def _introspect(self, token: str) -> dict[str, Any] | None:
        """The provider's answer: its claims if active, None if not."""
        url = await self._endpoint()
        host = URL(url).raw_host or ""
        timeout = self.config.fetch_timeout_seconds
        self.requests += 1
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve_safe(url, self.config.policy)
                # Connect only to the addresses just validated (no second DNS answer).
                connector = aiohttp.TCPConnector(
                    resolver=PinnedResolver(host, addresses), use_dns_cache=False, force_close=True
                )
                async with (
                    aiohttp.ClientSession(
                        connector=connector,
                        timeout=aiohttp.ClientTimeout(total=None),
                        trust_env=False,
                        cookie_jar=aiohttp.DummyCookieJar(),
                    ) as session,
                    session.post(
                        url,
                        data={"token": token, "token_type_hint": "access_token"},
                        headers={"Authorization": self._authorization, "Accept": "application/json"},
                        allow_redirects=False,
                    ) as response,
                ):
                    if response.status != 200:
                        raise FetchError(f"HTTP {response.status}", status=response.status)
                    body = b""
                    async for chunk in response.content.iter_chunked(16 * 1024):
                        body += chunk
                        if len(body) > _INTROSPECTION_MAX_BYTES:
                            break
        except TimeoutError:
            raise FetchError(f"timed out after {timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(type(exc).__name__) from None
        if len(body) > _INTROSPECTION_MAX_BYTES:
            raise FetchError("the answer is too large")
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchError("the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise FetchError("the answer is not a JSON object")
        return answer if answer.get("active") is True else None


def build_external_verifiers(
    configs: Iterable[ExternalIssuerConfig],
    resources: ResourceSpace,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[dict[str, TokenVerifier], TokenVerifier | None]:
    """Verifiers for `CompositeVerifier(issuers=…, opaque=…)`: JWTs by issuer, opaque tokens.

    Opaque tokens carry no issuer, so at most one provider may introspect them.

    Raises:
        ValueError: an issuer is configured twice, more than one provider introspects, or an
            introspection secret's environment variable is unset.
    """
    env = os.environ if environ is None else environ
    issuers: dict[str, TokenVerifier] = {}
    opaque: Introspector | None = None
    for config in configs:
        if config.issuer in issuers:
            raise ValueError(f"external issuer {config.issuer} is configured twice")
        issuer = ExternalIssuer(config, resources, clock=clock)
        issuers[config.issuer] = issuer
        if config.client_id is None:
            continue
        if opaque is not None:
            raise ValueError("only one external issuer may introspect opaque tokens")
        secret_env = config.client_secret_env or ""
        secret = env.get(secret_env)
        if not secret:
            raise ValueError(f"{secret_env} (client_secret_env of {config.issuer}) is not set")
        opaque = Introspector(config, issuer, secret, resources, clock=clock)
    return issuers, opaque


async def start_all(
    verifiers: Mapping[str, TokenVerifier] | Iterable[TokenVerifier],
    *,
    task_group: anyio.abc.TaskGroup | None = None,
    timeout_seconds: float = 10.0,
) -> None:
    """Load every external issuer's keys now; never raises for an unreachable provider.

    A provider that cannot be reached is logged and its tokens are refused until a later
    attempt succeeds: from the request path (rate-limited) or, with `task_group`, from each
    issuer's `run` loop, which also refreshes keys periodically.
    """
    values = verifiers.values() if isinstance(verifiers, Mapping) else verifiers
    issuers = [v for v in values if isinstance(v, ExternalIssuer)]
    with anyio.move_on_after(timeout_seconds):
        async with anyio.create_task_group() as tg:
            for issuer in issuers:
                tg.start_soon(issuer.start)
    for issuer in issuers:
        if not issuer.loaded:
            logger.warning(
                "external issuer %s is not available yet; retrying in the background", issuer.issuer
            )
        if task_group is not None:
            await task_group.start(issuer.run)
