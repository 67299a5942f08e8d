"""Access tokens: minted as ES256 JWTs by the built-in issuer, verified against a JWKS.

Signing keys are derived from the key ring (one P-256 key per master key id), so every
replica that shares the masters signs and verifies alike, and rotation only adds a key: the
JWKS keeps publishing older keys, so tokens signed before a rotation stay valid until expiry.

Verification is strict and table-driven (SECURITY_GOALS.md S1): the algorithm must be on an
allow-list that matches the key's type (no `none`, no HS256 keyed with a public key), the
issuer must be the one configured, the audience must name the requested resource (or the
gateway itself), and expiry / not-before are checked with a small skew. A verified token is
cached by its SHA-256 until it expires, so a busy agent pays for the signature check once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.principal import Principal

__all__ = [
    "ALLOWED_ALGORITHMS",
    "ClaimMapping",
    "InvalidTokenError",
    "IssuedToken",
    "JwtVerifier",
    "RevocationList",
    "TokenIssuer",
    "signing_keyset",
]

# Asymmetric only: a shared-secret algorithm would let anyone holding the public key sign.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "RS256", "PS256", "EdDSA", "Ed25519")
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
_SIGNING_PURPOSE = "jwt-signing/es256"
ROLE_NAMES = frozenset({"admin", "approver", "auditor", "viewer"})


class InvalidTokenError(Exception):
    """A bearer token is not acceptable; `reason` is a short machine-readable word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _es256_key(ring: KeyRing, kid: str) -> ECKey:
    seed = int.from_bytes(ring.derive(_SIGNING_PURPOSE, kid), "big")
    private = ec.derive_private_key(seed % (_P256_ORDER - 1) + 1, ec.SECP256R1())
    return ECKey.import_key(private, {"kid": kid, "use": "sig", "alg": "ES256"})


def signing_keyset(ring: KeyRing) -> KeySet:
    """Every signing key of the ring (private halves), active first."""
    return KeySet([_es256_key(ring, kid) for kid in ring.kids])


@dataclass(frozen=True)
class IssuedToken:
    """A freshly minted access token and what it says."""

    token: str
    jti: str
    expires_at: int
    scope: str


class TokenIssuer:
    """Mints access tokens for the built-in authorization server."""

    def __init__(
        self, issuer: str, ring: KeyRing, *, ttl_seconds: int = 900, clock: Callable[[], float] = time.time
    ) -> None:
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self.use(ring)

    def use(self, ring: KeyRing) -> None:
        """Switch to a (rotated) ring: sign with its active key, publish all of them."""
        keys = signing_keyset(ring)
        self._active = keys.keys[0]
        self._public = KeySet([ECKey.import_key(k.as_dict(private=False)) for k in keys.keys])

    @property
    def public_keys(self) -> KeySet:
        """The public keys tokens are verified with (what `/oauth/jwks.json` publishes)."""
        return self._public

    def jwks(self) -> dict[str, Any]:
        """The JWKS document."""
        return {"keys": [k.as_dict(private=False) for k in self._public.keys]}

    def mint(
        self,
        *,
        subject: str,
        client_id: str,
        audience: str,
        scope: str,
        kind: str,
        teams: Iterable[str] = (),
        roles: Iterable[str] = (),
        ttl_seconds: int | None = None,
    ) -> IssuedToken:
        """A signed access token for `audience` (an RFC 8707 resource URI)."""
        now = int(self._clock())
        expires = now + (ttl_seconds or self.ttl_seconds)
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "jti": jti,
            "kind": kind,
        }
        if teams := sorted(teams):
            claims["teams"] = teams
        if roles := sorted(roles):
            claims["roles"] = roles
        # RFC 9068 names this type for JWT access tokens, so an ID token cannot pass for one.
        header = {"alg": "ES256", "kid": self._active.kid, "typ": "at+jwt"}
        token = jwt.encode(header, claims, self._active, algorithms=["ES256"])
        return IssuedToken(token=token, jti=jti, expires_at=expires, scope=scope)


@dataclass
class RevocationList:
    """What no longer holds before its tokens expire.

    Two kinds of entry, both kept until the tokens they refuse would have expired anyway:
    a token id (`jti`), and a whole principal — `user:<subject>` or `client:<client id>` —
    whose tokens issued *before* the revocation are refused (so a re-enabled user's new tokens
    work). Filled from the database at start and by a short poll, so a revocation reaches
    every replica within seconds, and directly by the process that revoked.
    """

    _revoked: dict[str, float] = field(default_factory=dict)  # jti -> expires_at
    _before: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (revoked_at, until)

    def add(self, jti: str, expires_at: float) -> None:
        """Revoke one token id until `expires_at` (epoch seconds); principal keys use `revoke_before`."""
        if jti.startswith(("user:", "client:")):
            return
        self._revoked[jti] = expires_at

    def revoke_before(self, key: str, revoked_at: float, until: float) -> None:
        """Refuse tokens of `key` (`user:<subject>` or `client:<id>`) issued before `revoked_at`."""
        current = self._before.get(key)
        if current is None or current[0] < revoked_at:
            self._before[key] = (revoked_at, until)

    def __contains__(self, jti: object) -> bool:
        return isinstance(jti, str) and jti in self._revoked

    def purge(self, now: float) -> None:
        """Forget revocations of tokens that have expired anyway."""
        self._revoked = {j: e for j, e in self._revoked.items() if e > now}
        self._before = {k: v for k, v in self._before.items() if v[1] > now}

    def refused(self, principal: Principal) -> bool:
        """True when the principal's token, client or (user) subject has been revoked."""
        if principal.token_id is not None and principal.token_id in self._revoked:
            return True
        if not self._before:
            return False
        issued = principal.issued_at if principal.issued_at is not None else 0.0
        keys = [f"client:{principal.client_id}"] if principal.client_id else []
        if principal.kind == "user":
            keys.append(f"user:{principal.subject}")
        return any((entry := self._before.get(k)) is not None and issued < entry[0] for k in keys)


@dataclass(frozen=True)
class ClaimMapping:
    """Where a JWT keeps what tollhouse needs (external IdPs differ)."""

    subject: str = "sub"
    client_id: tuple[str, ...] = ("client_id", "azp", "cid", "appid")
    scopes: tuple[str, ...] = ("scope", "scp")
    teams: tuple[str, ...] = ("teams", "groups")
    roles: tuple[str, ...] = ("roles",)
    # Values of `roles` (or mapped groups) that are tollhouse admin roles, e.g. {"idp-admins": "admin"}.
    role_map: Mapping[str, str] = field(default_factory=dict)
    team_map: Mapping[str, str] = field(default_factory=dict)


class JwtVerifier:
    """Verifies JWT access tokens of one issuer against its public keys."""

    def __init__(
        self,
        *,
        issuer: str,
        keys: Callable[[], KeySet],
        accepted_audiences: Callable[[str], frozenset[str]],
        revoked: RevocationList | None = None,
        mapping: ClaimMapping | None = None,
        algorithms: Iterable[str] = ALLOWED_ALGORITHMS,
        leeway_seconds: int = 30,
        require_typ: str | None = None,
        kind_default: str = "user",
        trust_roles_claim: bool = False,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
    ) -> None:
        self.issuer = issuer
        self._keys = keys
        self._audiences = accepted_audiences
        self._revoked = revoked or RevocationList()
        self._mapping = mapping or ClaimMapping()
        self._algorithms = [a for a in algorithms if a in ALLOWED_ALGORITHMS]
        self._leeway = leeway_seconds
        self._require_typ = require_typ
        self._kind_default = kind_default
        # Only our own issuer's `roles` claim is taken at face value; other issuers' go through role_map.
        self._trust_roles = trust_roles_claim
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Principal, dict[str, Any]]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str, resource: str) -> Principal:
        """The principal of a valid token for `resource`.

        Raises:
            InvalidTokenError: malformed, bad signature, wrong issuer or audience, expired, revoked.
        """
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is None:
            claims = self._decode(token)
            principal = self._principal(claims)
            cached = (principal, claims)
            self._cache[digest] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        principal, claims = cached
        now = self._clock()
        if float(claims["exp"]) + self._leeway <= now:
            self._cache.pop(digest, None)
            raise InvalidTokenError("expired")
        if "nbf" in claims and float(claims["nbf"]) - self._leeway > now:
            raise InvalidTokenError("not_yet_valid")
        if self._revoked.refused(principal):
            raise InvalidTokenError("revoked")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not self._audiences(resource).intersection(a for a in audiences if isinstance(a, str)):
            raise InvalidTokenError("audience")
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            decoded = jwt.decode(token, self._keys(), algorithms=self._algorithms)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise InvalidTokenError(_reason(exc)) from None
        header, claims = decoded.header, decoded.claims
        if self._require_typ is not None and str(header.get("typ", "")).lower() not in {
            self._require_typ,
            "application/" + self._require_typ,
        }:
            raise InvalidTokenError("type")
        if claims.get("iss") != self.issuer:
            raise InvalidTokenError("issuer")
        if not isinstance(claims.get("exp"), int | float) or "aud" not in claims:
            raise InvalidTokenError("claims")
        if "nbf" in claims and not isinstance(claims["nbf"], int | float):
            raise InvalidTokenError("claims")
        subject = claims.get(self._mapping.subject)
        if not isinstance(subject, str) or not subject:
            raise InvalidTokenError("claims")
        return dict(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        mapping = self._mapping
        client_id = _first_str(claims, mapping.client_id)
        scopes = _strings(claims, mapping.scopes, split=True)
        teams = tuple(mapping.team_map.get(t, t) for t in _strings(claims, mapping.teams))
        roles = {
            mapping.role_map[r]
            for r in _strings(claims, mapping.roles + mapping.teams)
            if r in mapping.role_map
        }
        if self._trust_roles:
            roles |= {r for r in _strings(claims, ("roles",)) if r in ROLE_NAMES}
        kind = claims.get("kind")
        return Principal(
            subject=str(claims[mapping.subject]),
            client_id=client_id,
            teams=tuple(sorted(set(teams))),
            scopes=tuple(sorted(set(scopes))),
            issuer=self.issuer,
            kind=kind if kind in ("user", "client") else self._kind_default,
            roles=tuple(sorted(roles & ROLE_NAMES)),
            token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
            expires_at=float(claims["exp"]),
            issued_at=float(claims["iat"]) if isinstance(claims.get("iat"), int | float) else None,
        )


def _reason(exc: Exception) -> str:
    name = type(exc).__name__
    if "Signature" in name:
        return "signature"
    if "Algorithm" in name or "UnsupportedAlgorithm" in name:
        return "algorithm"
    if "Key" in name:
        return "key"
    return "malformed"


def _first_str(claims: Mapping[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _strings(claims: Mapping[str, Any], names: Iterable[str], *, split: bool = False) -> list[str]:
    out: list[str] = []
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            out.extend(value.split() if split else [value])
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out
