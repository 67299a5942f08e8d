"""Sealer: authenticated encryption of state the gateway hands to a client and gets back.

A 2026-07-28 `requestState` is attacker-controlled when it comes back (MCP 2026-07-28,
MRTR: servers MUST treat it as untrusted), so the gateway wraps the upstream's state in its
own AES-GCM envelope bound to the principal, the upstream, the tool and an expiry: a retry
can only reach the same upstream tool for the same principal, and nobody can read or forge it.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Sealer", "load_or_create_key"]

_PREFIX = "th1."
_AAD = b"tollhouse/request-state/v1"


class Sealer:
    """Seals JSON values into opaque strings and opens them again."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the sealing key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, value: Any) -> str:
        """An opaque, authenticated, encrypted token for `value`."""
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, orjson.dumps(value), _AAD)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, token: str) -> Any | None:
        """The value sealed in `token`, or None if it is not one of ours or was altered."""
        if not token.startswith(_PREFIX):
            return None
        raw = token[len(_PREFIX) :]
        try:
            blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            return orjson.loads(self._aead.decrypt(blob[:12], blob[12:], _AAD))
        except (binascii.Error, ValueError, InvalidTag, orjson.JSONDecodeError):
            return None


def load_or_create_key(data_dir: str, name: str) -> bytes:
    """A 32-byte key kept in `<data_dir>/keys/<name>.key` (created 0600 on first use)."""
    directory = Path(data_dir) / "keys"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.key"
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key
