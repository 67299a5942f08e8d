"""CredentialCipher: AES-256-GCM for the upstream credentials stored in the database.

Every stored credential (an upstream's static token, an OAuth client secret, a user's upstream
tokens) is sealed here before it reaches a row, under a key derived from the KeyRing for the
purpose "credentials" — so the database alone never decrypts anything (SECURITY_GOALS K1).

A sealed value is a self-describing string `v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>`:
the key id travels with it so several keys can be live during a rotation (K2), and the 96-bit
nonce is random per encryption. The associated data names the row and field the value belongs
to (`upstream-secret|calc|token`), so a ciphertext copied into another row — or two rows'
ciphertexts swapped — fails authentication instead of decrypting to the wrong credential.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tollhouse.auth.keyring import KeyRing

__all__ = [
    "CREDENTIALS_PURPOSE",
    "CredentialCipher",
    "VaultError",
    "upstream_secret_aad",
    "user_token_aad",
]

CREDENTIALS_PURPOSE = "credentials"
_VERSION = "v1"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class VaultError(ValueError):
    """A sealed value cannot be opened (unknown key, tampering, wrong row); never names the secret."""


def upstream_secret_aad(upstream: str, field: str) -> str:
    """The associated data of an upstream's stored secret `field` (`token`, `client_secret`, …)."""
    return f"upstream-secret|{upstream}|{field}"


def user_token_aad(subject: str, upstream: str) -> str:
    """The associated data of one user's stored tokens for one upstream."""
    return f"user-token|{subject}|{upstream}"


class CredentialCipher:
    """Seal and open credentials with AES-256-GCM; encrypts under `active`, decrypts under any key."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise ValueError("the active key id is not among the keys")
        for kid, key in keys.items():
            if not _KID.match(kid):
                raise ValueError(f"bad key id {kid!r}")
            if len(key) != 32:
                raise ValueError(f"key {kid!r} is not 32 bytes (AES-256)")
        self._aeads = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = active

    @classmethod
    def from_keyring(cls, ring: KeyRing) -> CredentialCipher:
        """A cipher over the ring's "credentials" keys, encrypting under its active key."""
        return cls(ring.derive_all(CREDENTIALS_PURPOSE), ring.active_kid)

    @property
    def active_kid(self) -> str:
        """The key id new ciphertexts use."""
        return self._active

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id this cipher can decrypt under."""
        return tuple(self._aeads)

    def encrypt(self, plaintext: bytes | str, aad: str) -> str:
        """Seal `plaintext` for the row named by `aad` under the active key."""
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aeads[self._active].encrypt(nonce, data, aad.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_VERSION}.{self._active}.{body}"

    def decrypt(self, token: str, aad: str) -> bytes:
        """Open a sealed value for the row named by `aad`.

        Raises:
            VaultError: malformed, an unknown key id, altered, or sealed for another row.
        """
        kid, raw = _split(token)
        aead = self._aeads.get(kid)
        if aead is None:
            raise VaultError(f"sealed under key {kid!r}, which is not configured")
        try:
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad.encode())
        except InvalidTag:
            raise VaultError("the sealed value does not authenticate for this row") from None

    def reencrypt(self, token: str, aad: str) -> str:
        """`token` sealed again under the active key (unchanged if it already is)."""
        if self.kid_of(token) == self._active:
            return token
        return self.encrypt(self.decrypt(token, aad), aad)

    @staticmethod
    def kid_of(token: str) -> str:
        """The key id a sealed value names.

        Raises:
            VaultError: it is not a sealed value.
        """
        return _split(token)[0]


def _split(token: str) -> tuple[str, bytes]:
    version, _, rest = token.partition(".")
    kid, _, body = rest.partition(".")
    if version != _VERSION or not _KID.match(kid) or not body:
        raise VaultError("not a sealed credential")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise VaultError("not a sealed credential") from None
    if len(raw) < _NONCE_BYTES + _TAG_BYTES:
        raise VaultError("not a sealed credential")
    return kid, raw
