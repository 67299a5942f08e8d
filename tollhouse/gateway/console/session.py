"""The console's browser state, sealed into cookies so any replica sharing the key ring serves it.

Values are encrypted and authenticated with AES-GCM under a key derived from the ring for
purpose `console-session` (the session holds the user's access and refresh tokens, so it must
be secret as well as tamper-proof). The key id travels with the value, so rotating the ring
does not sign anyone out; each value names its kind in the associated data, so a sign-in
state can never be replayed as a session. CSRF tokens are HMACs of the session id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tollhouse.auth.keyring import KeyRing

__all__ = ["ConsoleSession", "CookieNames", "Sealer", "SignInState"]

SEAL_PURPOSE = "console-session"
CSRF_PURPOSE = "console-csrf"
MAX_COOKIE_CHARS = 4000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class CookieNames:
    """Cookie names and flags: `__Host-` and Secure over https, plain names on http loopback."""

    secure: bool

    @property
    def prefix(self) -> str:
        return "__Host-" if self.secure else ""

    @property
    def session(self) -> str:
        return self.prefix + "tollhouse-console"

    @property
    def sign_in(self) -> str:
        return self.prefix + "tollhouse-console-signin"

    @property
    def flash(self) -> str:
        return self.prefix + "tollhouse-console-flash"


class Sealer:
    """Seals and opens cookie values under the current key ring (looked up on every use)."""

    def __init__(self, ring: Callable[[], KeyRing], *, clock: Callable[[], float] = time.time) -> None:
        self._ring = ring
        self._clock = clock
        self._cached: tuple[KeyRing, dict[str, bytes], dict[str, bytes]] | None = None

    def _keys(self) -> tuple[KeyRing, dict[str, bytes], dict[str, bytes]]:
        ring = self._ring()
        cached = self._cached
        if cached is None or cached[0] is not ring:
            cached = (ring, ring.derive_all(SEAL_PURPOSE), ring.derive_all(CSRF_PURPOSE))
            self._cached = cached
        return cached

    def seal(self, kind: str, payload: dict[str, Any], ttl_seconds: float) -> str:
        """`payload` plus an expiry, encrypted for `kind`."""
        ring, keys, _ = self._keys()
        nonce = os.urandom(12)
        body = orjson.dumps({**payload, "exp": self._clock() + ttl_seconds})
        sealed = AESGCM(keys[ring.active_kid]).encrypt(nonce, body, kind.encode())
        return f"{ring.active_kid}.{_b64(nonce + sealed)}"

    def open(self, kind: str, value: str | None) -> dict[str, Any] | None:
        """The payload of a valid, unexpired value of `kind`, else None."""
        if not value or len(value) > MAX_COOKIE_CHARS or value.count(".") != 1:
            return None
        kid, blob = value.split(".")
        _, keys, _ = self._keys()
        key = keys.get(kid)
        if key is None:
            return None
        try:
            raw = _unb64(blob)
            body = AESGCM(key).decrypt(raw[:12], raw[12:], kind.encode())
            payload = orjson.loads(body)
        except (ValueError, InvalidTag, orjson.JSONDecodeError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int | float):
            return None
        if payload["exp"] <= self._clock():
            return None
        return payload

    def csrf(self, sid: str) -> str:
        """The CSRF token of a session, under the active key."""
        ring, _, macs = self._keys()
        mac = hmac.new(macs[ring.active_kid], sid.encode(), hashlib.sha256).digest()
        return f"{ring.active_kid}.{_b64(mac)}"

    def check_csrf(self, sid: str, token: str | None) -> bool:
        """True when `token` is the session's CSRF token under any key of the ring."""
        if not token or token.count(".") != 1 or len(token) > 200:
            return False
        kid, mac = token.split(".")
        _, _, macs = self._keys()
        key = macs.get(kid)
        if key is None:
            return False
        expected = _b64(hmac.new(key, sid.encode(), hashlib.sha256).digest())
        return hmac.compare_digest(mac, expected)


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in browser: who, and the tokens the console acts with on their behalf."""

    sid: str
    subject: str
    access_token: str
    refresh_token: str | None
    access_expires_at: float
    ends_at: float

    def to_payload(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "sub": self.subject,
            "at": self.access_token,
            "rt": self.refresh_token,
            "ax": self.access_expires_at,
            "end": self.ends_at,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> ConsoleSession | None:
        if payload is None:
            return None
        sid, sub, at, rt = payload.get("sid"), payload.get("sub"), payload.get("at"), payload.get("rt")
        ax, end = payload.get("ax"), payload.get("end")
        if not (isinstance(sid, str) and isinstance(sub, str) and isinstance(at, str)):
            return None
        if rt is not None and not isinstance(rt, str):
            return None
        if not (isinstance(ax, int | float) and isinstance(end, int | float)):
            return None
        return cls(sid, sub, at, rt, float(ax), float(end))

    @staticmethod
    def new_sid() -> str:
        return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class SignInState:
    """An authorization request in flight: PKCE verifier, state, where to go afterwards."""

    state: str
    verifier: str
    next_path: str

    def to_payload(self) -> dict[str, Any]:
        return {"s": self.state, "v": self.verifier, "n": self.next_path}

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> SignInState | None:
        if payload is None:
            return None
        s, v, n = payload.get("s"), payload.get("v"), payload.get("n")
        if not (isinstance(s, str) and isinstance(v, str) and isinstance(n, str)):
            return None
        return cls(s, v, n)

    @classmethod
    def new(cls, next_path: str) -> SignInState:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(48), next_path)

    @property
    def challenge(self) -> str:
        """The S256 PKCE challenge of the verifier."""
        return _b64(hashlib.sha256(self.verifier.encode()).digest())
