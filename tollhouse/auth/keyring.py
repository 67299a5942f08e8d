"""KeyRing: the gateway's master keys, from which every purpose-specific key is derived.

One list of master keys, newest first, comes from `TOLLHOUSE_SECRET_KEYS`
(`kid:base64url,kid:base64url,…`) or, when that is unset, from `<data_dir>/keys/master.json`
(created 0600 on first start and kept across restarts). Each purpose — token signing,
credential encryption, audit checkpoints — gets its own key through HKDF-SHA256 with the
purpose as `info`, so one leaked derived key reveals neither the master nor its siblings, and
replicas that share the master list agree on every key without storing one in the database.

Rotation adds a new master at the front: new signatures and ciphertexts use it, while every
older key stays available to verify and decrypt until an operator removes it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KeyRing", "KeyRingError", "parse_secret_keys"]

_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_FILE = "master.json"


class KeyRingError(ValueError):
    """The configured key material is unusable; the message names the problem, never a key."""


@dataclass(frozen=True)
class KeyRing:
    """Master keys by id, newest (active) first."""

    masters: tuple[tuple[str, bytes], ...]
    source: str = "memory"  # "env", "file:<path>" or "memory"

    def __post_init__(self) -> None:
        if not self.masters:
            raise KeyRingError("the key ring is empty")
        kids = [kid for kid, _ in self.masters]
        if len(set(kids)) != len(kids):
            raise KeyRingError("key ids must be unique")
        for kid, key in self.masters:
            if not _KID.match(kid):
                raise KeyRingError(f"bad key id {kid!r}: use 1-32 of [A-Za-z0-9_-]")
            if len(key) < 32:
                raise KeyRingError(f"key {kid!r} is shorter than 32 bytes")

    @property
    def active_kid(self) -> str:
        """The id of the key new signatures and ciphertexts use."""
        return self.masters[0][0]

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id, active first."""
        return tuple(kid for kid, _ in self.masters)

    def derive(self, purpose: str, kid: str | None = None) -> bytes:
        """The 32-byte key for `purpose` under master `kid` (the active one by default).

        Raises:
            KeyError: no master key has that id.
        """
        kid = kid or self.active_kid
        master = dict(self.masters)[kid]
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tollhouse/" + purpose.encode())
        return hkdf.derive(master)

    def derive_all(self, purpose: str) -> dict[str, bytes]:
        """The key for `purpose` under every master, by key id (active first)."""
        return {kid: self.derive(purpose, kid) for kid in self.kids}

    @classmethod
    def generate(cls) -> KeyRing:
        """A ring with one fresh random key (tests, first start)."""
        return cls(((_new_kid(), secrets.token_bytes(32)),))

    @classmethod
    def load(cls, secret_keys: str | None, data_dir: str) -> KeyRing:
        """The ring from `TOLLHOUSE_SECRET_KEYS` if set, else from (or created in) the data directory."""
        if secret_keys:
            return cls(parse_secret_keys(secret_keys), source="env")
        path = Path(data_dir) / "keys" / _FILE
        if path.exists():
            return cls(_read_file(path), source=f"file:{path}")
        ring = cls.generate()
        _write_file(path, ring.masters)
        return cls(ring.masters, source=f"file:{path}")

    def rotated(self) -> KeyRing:
        """A ring with a new active key in front of these (file-backed rings are saved).

        Raises:
            KeyRingError: the keys come from the environment, which only its owner can change.
        """
        if self.source == "env":
            raise KeyRingError(
                "the keys come from TOLLHOUSE_SECRET_KEYS: put a new key in front of the list on every "
                "replica and restart; then run `tollhouse keys rotate` to re-encrypt stored credentials"
            )
        masters = ((_new_kid(), secrets.token_bytes(32)), *self.masters)
        if self.source.startswith("file:"):
            _write_file(Path(self.source[5:]), masters)
        return KeyRing(masters, source=self.source)

    def without(self, kid: str) -> KeyRing:
        """A ring without `kid` (file-backed rings are saved).

        Raises:
            KeyRingError: `kid` is the active key, unknown, or the keys come from the environment.
        """
        if kid not in self.kids:
            raise KeyRingError(f"no key {kid!r}")
        if kid == self.active_kid:
            raise KeyRingError("the active key cannot be removed; rotate first")
        if self.source == "env":
            raise KeyRingError("the keys come from TOLLHOUSE_SECRET_KEYS: remove it there")
        masters = tuple(item for item in self.masters if item[0] != kid)
        if self.source.startswith("file:"):
            _write_file(Path(self.source[5:]), masters)
        return KeyRing(masters, source=self.source)

    def public_summary(self) -> list[dict[str, object]]:
        """Key ids and their order, for the admin API; never key bytes."""
        return [{"kid": kid, "active": kid == self.active_kid} for kid in self.kids]


def parse_secret_keys(value: str) -> tuple[tuple[str, bytes], ...]:
    """Parse `kid:base64url,kid:base64url,…` (newest first).

    Raises:
        KeyRingError: an entry is malformed; the message never echoes key bytes.
    """
    out: list[tuple[str, bytes]] = []
    for position, entry in enumerate(item.strip() for item in value.split(",")):
        if not entry:
            continue
        kid, sep, encoded = entry.partition(":")
        if not sep:
            raise KeyRingError(f"TOLLHOUSE_SECRET_KEYS entry {position + 1} is not kid:base64url")
        out.append((kid.strip(), _b64decode(encoded.strip(), f"entry {position + 1}")))
    if not out:
        raise KeyRingError("TOLLHOUSE_SECRET_KEYS holds no key")
    return tuple(out)


def format_secret_key(kid: str, key: bytes) -> str:
    """The `kid:base64url` form of one key, as `TOLLHOUSE_SECRET_KEYS` takes it."""
    return f"{kid}:{base64.urlsafe_b64encode(key).decode().rstrip('=')}"


def _b64decode(value: str, where: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise KeyRingError(f"TOLLHOUSE_SECRET_KEYS {where}: not base64url") from None


def _new_kid() -> str:
    # Sortable by creation time, unique enough across replicas that generate their own.
    return f"k{int(time.time()):x}{secrets.token_hex(2)}"


def _read_file(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        data = orjson.loads(path.read_bytes())
        return tuple((str(item["kid"]), _b64decode(str(item["key"]), path.name)) for item in data["keys"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise KeyRingError(f"cannot read the key file {path}: {type(exc).__name__}") from None


def _write_file(path: Path, masters: tuple[tuple[str, bytes], ...] | Mapping[str, bytes]) -> None:
    items = masters.items() if isinstance(masters, Mapping) else masters
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = orjson.dumps(
        {"keys": [{"kid": kid, "key": base64.urlsafe_b64encode(key).decode()} for kid, key in items]},
        option=orjson.OPT_INDENT_2,
    )
    # Write-then-rename so a crash never leaves a half-written key file; 0600 from creation.
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
