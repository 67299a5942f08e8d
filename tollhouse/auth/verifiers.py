"""Token verification: bearer credential -> Principal.

`TokenVerifier` is the seam OAuth plugs into later. `ApiKeyVerifier` answers from an
in-memory index of key hashes, so verifying a key reads no database on the request path;
the admin API updates the index when clients are created or revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Protocol

from tollhouse.auth.principal import Principal
from tollhouse.registry.models import ClientRecord

__all__ = ["API_KEY_PREFIX", "ApiKeyVerifier", "TokenVerifier", "hash_secret", "new_api_key"]

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
    """Turns a bearer token into a Principal, or None when it is not acceptable."""

    async def verify(self, token: str) -> Principal | None:
        """The principal for `token`, or None (missing, wrong, expired, revoked, foreign)."""
        ...


class ApiKeyVerifier:
    """Verifies API keys against an in-memory index of active clients' key hashes."""

    def __init__(self, clients: Iterable[ClientRecord] = ()) -> None:
        self._by_hash: dict[str, Principal] = {}
        self.replace(clients)

    def replace(self, clients: Iterable[ClientRecord]) -> None:
        """Rebuild the index from the full client list."""
        index: dict[str, Principal] = {}
        for client in clients:
            if client.active and client.key_hash:
                index[client.key_hash] = _principal_of(client)
        self._by_hash = index

    def upsert(self, client: ClientRecord) -> None:
        """Add, update or (when revoked) drop one client."""
        index = {h: p for h, p in self._by_hash.items() if p.client_id != client.client_id}
        if client.active and client.key_hash:
            index[client.key_hash] = _principal_of(client)
        self._by_hash = index  # swap, never mutate in place: readers see one version

    async def verify(self, token: str) -> Principal | None:
        """The client principal for an API key, or None."""
        if not token.startswith(API_KEY_PREFIX):
            return None
        return self._by_hash.get(hash_secret(token))


def _principal_of(client: ClientRecord) -> Principal:
    return Principal(
        subject=client.client_id,
        client_id=client.client_id,
        teams=(client.team,) if client.team else (),
        kind="client",
    )
