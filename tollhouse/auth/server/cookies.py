"""Signed values for the sign-in pages: the login session, the pending authorization, CSRF tokens.

Nothing here is stored server-side except the ids of spent transactions, so any replica that
shares the key ring can serve any page of a sign-in. Values are HMAC-SHA256 signed (not
encrypted: they hold only what the browser already sent or may see) with a key derived from
the ring for purpose `oauth-cookies`; the key id travels with the value, so a ring rotation
does not sign everyone out. Each value names its kind inside the MAC, so a transaction can
never be replayed as a session or the reverse.

A transaction (the authorization request carried from the authorize page through sign-in to
the consent decision) expires after at most ten minutes and is spent by the decision: its
nonce goes on a used list until it would have expired anyway (per replica; the code it yields
is single-use in the database regardless).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tollhouse.auth.keyring import KeyRing

__all__ = ["LoginSession", "Signer", "SpentNonces", "Transaction"]

PURPOSE = "oauth-cookies"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC signing and verification under the ring's `oauth-cookies` keys."""

    def __init__(self, ring: KeyRing, *, clock: Callable[[], float] = time.time) -> None:
        self._keys = ring.derive_all(PURPOSE)
        self._active = ring.active_kid
        self._clock = clock

    def _mac(self, kid: str, kind: str, body: str) -> str:
        digest = hmac.new(self._keys[kid], f"{kind}|{body}".encode(), hashlib.sha256).digest()
        return _b64(digest)

    def sign(self, kind: str, payload: Mapping[str, Any], ttl_seconds: float) -> str:
        """`payload` plus an expiry, signed for `kind`."""
        body = _b64(orjson.dumps({**payload, "exp": self._clock() + ttl_seconds}))
        return f"{self._active}.{body}.{self._mac(self._active, kind, body)}"

    def unsign(self, kind: str, value: str | None) -> dict[str, Any] | None:
        """The payload of a valid, unexpired value of `kind`, else None."""
        if not value or len(value) > 8192:
            return None
        parts = value.split(".")
        if len(parts) != 3 or parts[0] not in self._keys:
            return None
        kid, body, mac = parts
        if not hmac.compare_digest(mac, self._mac(kid, kind, body)):
            return None
        try:
            payload = orjson.loads(_unb64(body))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int | float):
            return None
        if payload["exp"] <= self._clock():
            return None
        return payload

    def token(self, kind: str, *parts: str) -> str:
        """A CSRF token binding `parts` (a session id, a transaction nonce) under the active key."""
        return f"{self._active}.{self._mac(self._active, kind, '|'.join(parts))}"

    def check_token(self, kind: str, value: str | None, *parts: str) -> bool:
        """True when `value` is the CSRF token of `parts` under any key of the ring."""
        if not value or value.count(".") != 1:
            return False
        kid, mac = value.split(".")
        if kid not in self._keys:
            return False
        return hmac.compare_digest(mac, self._mac(kid, kind, "|".join(parts)))


@dataclass(frozen=True)
class Transaction:
    """A validated authorization request waiting for sign-in and consent."""

    nonce: str
    params: tuple[tuple[str, str], ...]
    expires_at: float

    @classmethod
    def new(cls, params: tuple[tuple[str, str], ...], expires_at: float) -> Transaction:
        """A transaction with a fresh nonce."""
        return cls(secrets.token_urlsafe(16), params, expires_at)

    def seal(self, signer: Signer, now: float) -> str:
        """The signed form carried in URLs and forms."""
        return signer.sign("txn", {"n": self.nonce, "p": list(self.params)}, self.expires_at - now)

    @classmethod
    def open(cls, signer: Signer, value: str | None) -> Transaction | None:
        """The transaction of a sealed value, or None if forged or expired."""
        payload = signer.unsign("txn", value)
        if payload is None:
            return None
        nonce, params = payload.get("n"), payload.get("p")
        if not isinstance(nonce, str) or not isinstance(params, list):
            return None
        pairs: list[tuple[str, str]] = []
        for item in params:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)):
                return None
            pairs.append((item[0], item[1]))
        return cls(nonce, tuple(pairs), float(payload["exp"]))


@dataclass(frozen=True)
class LoginSession:
    """A signed-in browser: the user and a random session id that CSRF tokens bind to."""

    sid: str
    subject: str

    def seal(self, signer: Signer, ttl_seconds: float) -> str:
        """The cookie value."""
        return signer.sign("session", {"sid": self.sid, "sub": self.subject}, ttl_seconds)

    @classmethod
    def open(cls, signer: Signer, value: str | None) -> LoginSession | None:
        """The session of a cookie value, or None."""
        payload = signer.unsign("session", value)
        if (
            payload is None
            or not isinstance(payload.get("sid"), str)
            or not isinstance(payload.get("sub"), str)
        ):
            return None
        return cls(payload["sid"], payload["sub"])


@dataclass
class SpentNonces:
    """Transaction nonces already decided, kept until they would have expired."""

    clock: Callable[[], float] = time.time
    max_entries: int = 100_000
    _spent: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def spend(self, nonce: str, expires_at: float) -> bool:
        """Mark `nonce` spent; False if it already was."""
        now = self.clock()
        while self._spent and next(iter(self._spent.values())) <= now:
            self._spent.popitem(last=False)
        if nonce in self._spent:
            return False
        self._spent[nonce] = expires_at
        while len(self._spent) > self.max_entries:
            self._spent.popitem(last=False)
        return True
