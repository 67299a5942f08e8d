"""Password hashing for local users: argon2id (argon2-cffi), never a fast hash.

Verification of an unknown user still spends one hash, so response time does not reveal
which user names exist.
"""

from __future__ import annotations

from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MIN_PASSWORD_LENGTH", "PasswordError", "Passwords"]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024


class PasswordError(ValueError):
    """A new password is not acceptable."""


class Passwords:
    """Hashes and verifies passwords with argon2id."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        # OWASP's argon2id baseline (19 MiB, t=2, p=1): the library default's 64 MiB per
        # concurrent sign-in would dominate the gateway's memory for no gain against offline attack
        # at this cost level. Stored hashes carry their parameters, so older ones still verify.
        self._hasher = hasher or PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

    @cached_property
    def _dummy(self) -> str:
        # Made on first use, not at start: nothing to hash until someone signs in.
        return self._hasher.hash("tollhouse-dummy-password")

    def hash(self, password: str) -> str:
        """The argon2id hash of an acceptable new password.

        Raises:
            PasswordError: too short or too long.
        """
        if len(password) < MIN_PASSWORD_LENGTH:
            raise PasswordError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise PasswordError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when `password` matches; a None hash still costs one verification."""
        if len(password) > MAX_PASSWORD_LENGTH:
            return False
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
