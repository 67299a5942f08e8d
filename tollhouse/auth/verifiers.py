"""Token verification: bearer credential -> Principal.

`TokenVerifier` is the seam every credential kind plugs into: `ApiKeyVerifier` answers from
an in-memory index of key hashes (no database read on the request path; the admin API
updates the index), `LocalJwtVerifier` checks the built-in issuer's JWTs, external issuers
and introspection come from `external.py`, and `CompositeVerifier` routes a token to the one
verifier that can judge it — by shape and by its unverified `iss`, never by trying them all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import orjson

from tollhouse.auth.principal import Principal
from tollhouse.auth.resources import DEFAULT_SCOPES
from tollhouse.auth.tokens import InvalidTokenError, JwtVerifier
from tollhouse.registry.models import ClientRecord

__all__ = [
    "API_KEY_PREFIX",
    "ApiKeyVerifier",
    "CompositeVerifier",
    "InvalidTokenError",
    "TokenVerifier",
    "client_principal",
    "hash_secret",
    "new_api_key",
]

API_KEY_PREFIX = "thk_"


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a high-entropy secret (API keys, admin token).

    A fast hash suffices: keys carry 256 random bits, so there is nothing to brute-force.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh API key: prefix plus 256 bits from the OS CSPRNG."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


class TokenVerifier(Protocol):
    """Turns a bearer token presented at `resource` into a Principal."""

    async def verify(self, token: str, resource: str) -> Principal:
        """The principal for `token` at `resource` (the endpoint's RFC 8707 URI).

        Raises:
            InvalidTokenError: missing, wrong, expired, revoked, foreign or for another resource.
        """
        ...


class ApiKeyVerifier:
    """Verifies API keys against an in-memory index of active clients' key hashes."""

    def __init__(self, clients: Iterable[ClientRecord] = (), *, enabled: bool = True) -> None:
        self._by_hash: dict[str, Principal] = {}
        self.enabled = enabled
        self.replace(clients)

    def replace(self, clients: Iterable[ClientRecord]) -> None:
        """Rebuild the index from the full client list."""
        index: dict[str, Principal] = {}
        for client in clients:
            if client.active and client.key_hash:
                index[client.key_hash] = client_principal(client)
        self._by_hash = index

    def upsert(self, client: ClientRecord) -> None:
        """Add, update or (when revoked) drop one client."""
        index = {h: p for h, p in self._by_hash.items() if p.client_id != client.client_id}
        if client.active and client.key_hash:
            index[client.key_hash] = client_principal(client)
        self._by_hash = index  # swap, never mutate in place: readers see one version

    async def verify(self, token: str, resource: str) -> Principal:
        """The client principal for an API key (valid at every endpoint).

        Raises:
            InvalidTokenError: not an active key, or API keys are disabled.
        """
        if not self.enabled:
            raise InvalidTokenError("api_keys_disabled")
        principal = self._by_hash.get(hash_secret(token)) if token.startswith(API_KEY_PREFIX) else None
        if principal is None:
            raise InvalidTokenError("unknown_key")
        return principal


class LocalJwtVerifier:
    """The built-in issuer's JWTs, verified in-process (no I/O)."""

    def __init__(self, jwt_verifier: JwtVerifier) -> None:
        self.issuer = jwt_verifier.issuer
        self._jwt = jwt_verifier

    async def verify(self, token: str, resource: str) -> Principal:
        """The principal of one of our own access tokens."""
        return self._jwt.verify(token, resource)


class CompositeVerifier:
    """Routes each token to the verifier for its kind: API key, a JWT by issuer, or introspection."""

    def __init__(
        self,
        *,
        api_keys: TokenVerifier | None = None,
        issuers: Mapping[str, TokenVerifier] | None = None,
        opaque: TokenVerifier | None = None,
    ) -> None:
        self.api_keys = api_keys
        self.issuers = dict(issuers or {})
        self.opaque = opaque

    async def verify(self, token: str, resource: str) -> Principal:
        """The principal for `token`, judged by exactly one verifier."""
        if token.startswith(API_KEY_PREFIX):
            if self.api_keys is None:
                raise InvalidTokenError("api_keys_disabled")
            return await self.api_keys.verify(token, resource)
        claims = _unverified_claims(token)
        if claims is None:
            if self.opaque is None:
                raise InvalidTokenError("malformed")
            return await self.opaque.verify(token, resource)
        issuer = claims.get("iss")
        verifier = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise InvalidTokenError("issuer")
        return await verifier.verify(token, resource)


def _unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS, *unverified*: only to pick the verifier, never to trust."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16 * 1024:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def client_principal(client: ClientRecord) -> Principal:
    """The principal an API client acts as: itself, in its team, with its scopes."""
    return Principal(
        subject=client.client_id,
        client_id=client.client_id,
        teams=(client.team,) if client.team else (),
        scopes=tuple(sorted(set(client.scopes) | set(DEFAULT_SCOPES))),
        kind="client",
    )
