"""Sealer: authenticated encryption of state the gateway hands to a client and gets back.

A 2026-07-28 `requestState` is attacker-controlled when it comes back (MCP 2026-07-28,
MRTR: servers MUST treat it as untrusted), so the gateway wraps the upstream's state in its
own AES-GCM envelope bound to the principal, the upstream, the tool and an expiry: a retry
can only reach the same upstream tool for the same principal, and nobody can read or forge it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Sealer"]

_PREFIX = "th1."
_AAD = b"tollhouse/request-state/v1"


class Sealer:
    """Seals JSON values into opaque strings and opens them again."""

    def __init__(self, key: bytes | Sequence[bytes], *, purpose: bytes = _AAD) -> None:
        keys = [key] if isinstance(key, bytes) else list(key)
        if not keys or any(len(k) != 32 for k in keys):
            raise ValueError("the sealing keys must be 32 bytes each")
        # The first key seals; every key opens (values sealed before a key rotation stay readable).
        self._aeads = [AESGCM(k) for k in keys]
        self._aad = purpose

    def seal(self, value: Any) -> str:
        """An opaque, authenticated, encrypted token for `value`."""
        nonce = secrets.token_bytes(12)
        sealed = self._aeads[0].encrypt(nonce, orjson.dumps(value), self._aad)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, token: str) -> Any | None:
        """The value sealed in `token`, or None if it is not one of ours or was altered."""
        if not token.startswith(_PREFIX):
            return None
        raw = token[len(_PREFIX) :]
        try:
            blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            return None
        for aead in self._aeads:
            try:
                return orjson.loads(aead.decrypt(blob[:12], blob[12:], self._aad))
            except InvalidTag:
                continue
            except (ValueError, orjson.JSONDecodeError):
                return None
        return None
