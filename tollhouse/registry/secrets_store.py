"""SqlSecretStore: the sealed upstream credentials, in their own tables next to the registry.

Rows hold only what `CredentialCipher` produced (`v1.<kid>.<…>`) and the key id, so the store
can tell which keys are still referenced without opening anything (K2: a key still in use
cannot be removed). Plaintext exists only in memory, between `put`/`get` and the caller.
Kept apart from `SqlRegistryStore` because registry records are shown and exported freely
while nothing here ever is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.auth.vault import CredentialCipher, VaultError, upstream_secret_aad, user_token_aad
from tollhouse.registry.tables import (
    UPSTREAM_SECRETS,
    USER_UPSTREAM_TOKENS,
    UpstreamSecretRow,
    UserUpstreamTokenRow,
)
from tollhouse.registry.transactions import TransactionalStore, utcnow

__all__ = ["RotationReport", "SqlSecretStore"]

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class RotationReport:
    """What a re-encryption pass did: rows rewritten, and rows per key id afterwards."""

    active_kid: str
    reencrypted: int
    rows_by_kid: dict[str, int]


class SqlSecretStore(TransactionalStore):
    """Sealed upstream secrets and per-user upstream tokens over the registry's engine."""

    def __init__(self, engine: sa.Engine, cipher: CredentialCipher, *, clock: Clock = utcnow) -> None:
        super().__init__(engine, clock=clock)
        self._engine = engine
        self._cipher = cipher

    @property
    def cipher(self) -> CredentialCipher:
        """The cipher rows are sealed and opened with."""
        return self._cipher

    def use_cipher(self, cipher: CredentialCipher) -> None:
        """Seal new values with `cipher` from now on (after a key rotation)."""
        self._cipher = cipher

    # -- upstream secrets -------------------------------------------------------------

    async def put_secret(self, upstream: str, field: str, value: str) -> None:
        """Store (or replace) `upstream`'s secret `field`, sealed; the upstream must exist."""
        sealed = self._cipher.encrypt(value, upstream_secret_aad(upstream, field))
        kid = self._cipher.active_kid

        def work(session: Session) -> None:
            row = session.get(UpstreamSecretRow, (upstream, field), with_for_update=True)
            if row is None:
                session.add(
                    UpstreamSecretRow(
                        upstream=upstream, field=field, kid=kid, ciphertext=sealed, updated_at=self._now()
                    )
                )
            else:
                row.kid, row.ciphertext, row.updated_at = kid, sealed, self._now()

        await self._run(work, write=True)

    async def get_secret(self, upstream: str, field: str) -> str | None:
        """The plaintext of `upstream`'s secret `field`, or None when none is stored.

        Raises:
            VaultError: the row cannot be opened (its key is gone, or it was altered or moved).
        """

        def work(session: Session) -> str | None:
            row = session.get(UpstreamSecretRow, (upstream, field))
            return None if row is None else row.ciphertext

        sealed = await self._run(work)
        if sealed is None:
            return None
        return self._cipher.decrypt(sealed, upstream_secret_aad(upstream, field)).decode()

    async def secret_fields(self, upstream: str | None = None) -> dict[str, list[str]]:
        """The stored secret fields (names only) by upstream, of one upstream or of all."""

        def work(session: Session) -> dict[str, list[str]]:
            query = sa.select(UPSTREAM_SECRETS.c.upstream, UPSTREAM_SECRETS.c.field).order_by(
                UPSTREAM_SECRETS.c.upstream, UPSTREAM_SECRETS.c.field
            )
            if upstream is not None:
                query = query.where(UPSTREAM_SECRETS.c.upstream == upstream)
            out: dict[str, list[str]] = {}
            for name, field in session.execute(query):
                out.setdefault(name, []).append(field)
            return out

        return await self._run(work)

    async def delete_secret(self, upstream: str, field: str | None = None) -> int:
        """Delete one secret of `upstream`, or all of them; returns how many rows went."""

        def work(session: Session) -> int:
            query = sa.delete(UpstreamSecretRow).where(UPSTREAM_SECRETS.c.upstream == upstream)
            if field is not None:
                query = query.where(UPSTREAM_SECRETS.c.field == field)
            return int(session.execute(query).rowcount)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    # -- per-user tokens --------------------------------------------------------------

    async def put_user_token(self, subject: str, upstream: str, payload: bytes) -> None:
        """Store (or replace) `subject`'s sealed token payload for `upstream`."""
        sealed = self._cipher.encrypt(payload, user_token_aad(subject, upstream))
        kid = self._cipher.active_kid

        def work(session: Session) -> None:
            row = session.get(UserUpstreamTokenRow, (subject, upstream), with_for_update=True)
            if row is None:
                session.add(
                    UserUpstreamTokenRow(
                        subject=subject, upstream=upstream, kid=kid, ciphertext=sealed, updated_at=self._now()
                    )
                )
            else:
                row.kid, row.ciphertext, row.updated_at = kid, sealed, self._now()

        await self._run(work, write=True)

    async def get_user_token(self, subject: str, upstream: str) -> bytes | None:
        """`subject`'s token payload for `upstream`, or None.

        Raises:
            VaultError: the row cannot be opened.
        """

        def work(session: Session) -> str | None:
            row = session.get(UserUpstreamTokenRow, (subject, upstream))
            return None if row is None else row.ciphertext

        sealed = await self._run(work)
        if sealed is None:
            return None
        return self._cipher.decrypt(sealed, user_token_aad(subject, upstream))

    async def delete_user_token(self, subject: str, upstream: str) -> bool:
        """Forget `subject`'s tokens for `upstream`; False if there were none."""

        def work(session: Session) -> bool:
            query = sa.delete(UserUpstreamTokenRow).where(
                USER_UPSTREAM_TOKENS.c.subject == subject, USER_UPSTREAM_TOKENS.c.upstream == upstream
            )
            return bool(session.execute(query).rowcount)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    async def delete_upstream(self, upstream: str) -> None:
        """Delete every secret and user token of `upstream` (ON DELETE CASCADE does it too)."""

        def work(session: Session) -> None:
            session.execute(sa.delete(UpstreamSecretRow).where(UPSTREAM_SECRETS.c.upstream == upstream))
            session.execute(
                sa.delete(UserUpstreamTokenRow).where(USER_UPSTREAM_TOKENS.c.upstream == upstream)
            )

        await self._run(work, write=True)

    # -- keys -------------------------------------------------------------------------

    async def rows_by_kid(self) -> dict[str, int]:
        """How many sealed rows each key id is referenced by (both tables)."""

        def work(session: Session) -> dict[str, int]:
            counts: dict[str, int] = {}
            for table in (UPSTREAM_SECRETS, USER_UPSTREAM_TOKENS):
                query = sa.select(table.c.kid, sa.func.count()).group_by(table.c.kid)
                for kid, count in session.execute(query):
                    counts[kid] = counts.get(kid, 0) + int(count)
            return counts

        return await self._run(work)

    async def reencrypt_all(self, cipher: CredentialCipher | None = None) -> RotationReport:
        """Seal every row again under the active key of `cipher` (default: the store's), in one transaction.

        Each row is opened with its own associated data first, so a row that does not
        authenticate stops the pass (nothing is written) instead of being laundered under the
        new key.

        Raises:
            VaultError: a row cannot be opened; the message names the row, never its value.
        """
        if cipher is not None:
            self._cipher = cipher
        active = self._cipher

        def work(session: Session) -> int:
            changed = 0
            now = self._now()
            secrets_query = sa.select(UpstreamSecretRow).with_for_update()
            for row in session.scalars(secrets_query):
                if row.kid != active.active_kid:
                    aad = upstream_secret_aad(row.upstream, row.field)
                    row.ciphertext = _reseal(active, row.ciphertext, aad, f"{row.upstream}/{row.field}")
                    row.kid, row.updated_at = active.active_kid, now
                    changed += 1
            tokens_query = sa.select(UserUpstreamTokenRow).with_for_update()
            for token_row in session.scalars(tokens_query):
                if token_row.kid != active.active_kid:
                    aad = user_token_aad(token_row.subject, token_row.upstream)
                    where = f"user token for {token_row.upstream}"
                    token_row.ciphertext = _reseal(active, token_row.ciphertext, aad, where)
                    token_row.kid, token_row.updated_at = active.active_kid, now
                    changed += 1
            return changed

        changed = await self._run(work, write=True)
        return RotationReport(active.active_kid, changed, await self.rows_by_kid())


def _reseal(cipher: CredentialCipher, sealed: str, aad: str, where: str) -> str:
    try:
        return cipher.reencrypt(sealed, aad)
    except VaultError as exc:
        raise VaultError(f"{where}: {exc}") from None
