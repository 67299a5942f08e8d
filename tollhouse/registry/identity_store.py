"""IdentityStore: users, teams and the authorization server's short-lived grants.

Kept apart from `store.py` (upstreams and catalogs) so each stays small; both run over the
same engine. Codes and refresh tokens are stored by hash only, and every "use once" step
(redeeming a code, rotating a refresh token) is a single conditional write, so two replicas
racing for the same code cannot both win.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tollhouse.registry.models import AuthCode, RefreshGrant, Team, User
from tollhouse.registry.store import StoreConflictError
from tollhouse.registry.tables import (
    CONSENTS,
    OAUTH_CODES,
    REFRESH_TOKENS,
    REVOKED_TOKENS,
    AuthCodeRow,
    ConsentRow,
    RefreshTokenRow,
    RevokedTokenRow,
    TeamRow,
    UserRow,
    utc,
)
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["SqlIdentityStore"]


class SqlIdentityStore(TransactionalStore):
    """Identity persistence over a sync SQLAlchemy engine; each call is one transaction in a thread."""

    # -- teams ---------------------------------------------------------------------------

    async def create_team(self, team: Team) -> Team:
        """Insert a team.

        Raises:
            StoreConflictError: the name is taken.
        """

        def work(session: Session) -> Team:
            row = TeamRow(name=team.name, description=team.description, created_at=self._now())
            session.add(row)
            session.flush()
            return _team(row)

        try:
            return await self._run(work, write=True)
        except IntegrityError as exc:
            raise StoreConflictError(f"team {team.name!r} exists") from exc

    async def upsert_team(self, team: Team) -> Team:
        """Insert a team or update its description."""

        def work(session: Session) -> Team:
            row = session.get(TeamRow, team.name, with_for_update=True)
            if row is None:
                row = TeamRow(name=team.name, description=team.description, created_at=self._now())
                session.add(row)
            else:
                row.description = team.description
            session.flush()
            return _team(row)

        return await self._run(work, write=True)

    async def list_teams(self) -> list[Team]:
        """All teams by name."""
        return await self._run(
            lambda s: [_team(r) for r in s.scalars(sa.select(TeamRow).order_by(sa.text("name")))]
        )

    async def get_team(self, name: str) -> Team | None:
        """One team, or None."""
        return await self._run(lambda s: None if (r := s.get(TeamRow, name)) is None else _team(r))

    async def delete_team(self, name: str) -> bool:
        """Delete a team; False if unknown."""

        def work(session: Session) -> bool:
            row = session.get(TeamRow, name)
            if row is None:
                return False
            session.delete(row)
            return True

        return await self._run(work, write=True)

    # -- users ---------------------------------------------------------------------------

    async def create_user(self, user: User) -> User:
        """Insert a user.

        Raises:
            StoreConflictError: the subject is taken.
        """

        def work(session: Session) -> User:
            now = self._now()
            row = UserRow(
                subject=user.subject,
                password_hash=user.password_hash,
                display_name=user.display_name,
                roles=list(user.roles),
                teams=list(user.teams),
                disabled=user.disabled,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _user(row)

        try:
            return await self._run(work, write=True)
        except IntegrityError as exc:
            raise StoreConflictError(f"user {user.subject!r} exists") from exc

    async def update_user(
        self,
        subject: str,
        *,
        password_hash: str | None = None,
        roles: tuple[str, ...] | None = None,
        teams: tuple[str, ...] | None = None,
        disabled: bool | None = None,
        display_name: str | None = None,
    ) -> User | None:
        """Change the given fields of a user; None if unknown."""

        def work(session: Session) -> User | None:
            row = session.get(UserRow, subject, with_for_update=True)
            if row is None:
                return None
            if password_hash is not None:
                row.password_hash = password_hash
            if roles is not None:
                row.roles = list(roles)
            if teams is not None:
                row.teams = list(teams)
            if disabled is not None:
                row.disabled = disabled
            if display_name is not None:
                row.display_name = display_name
            row.updated_at = self._now()
            session.flush()
            return _user(row)

        return await self._run(work, write=True)

    async def get_user(self, subject: str) -> User | None:
        """One user, or None."""
        return await self._run(lambda s: None if (r := s.get(UserRow, subject)) is None else _user(r))

    async def list_users(self) -> list[User]:
        """All users by subject."""
        return await self._run(
            lambda s: [_user(r) for r in s.scalars(sa.select(UserRow).order_by(sa.text("subject")))]
        )

    async def delete_user(self, subject: str) -> bool:
        """Delete a user and their consents and refresh tokens; False if unknown."""

        def work(session: Session) -> bool:
            row = session.get(UserRow, subject)
            if row is None:
                return False
            session.delete(row)
            session.execute(sa.delete(CONSENTS).where(CONSENTS.c.subject == subject))
            session.execute(
                sa.update(REFRESH_TOKENS)
                .where(REFRESH_TOKENS.c.subject == subject, REFRESH_TOKENS.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            return True

        return await self._run(work, write=True)

    # -- authorization codes -------------------------------------------------------------

    async def save_code(self, code: AuthCode) -> None:
        """Store a new authorization code (by hash)."""

        def work(session: Session) -> None:
            session.add(
                AuthCodeRow(
                    code_hash=code.code_hash,
                    client_id=code.client_id,
                    subject=code.subject,
                    redirect_uri=code.redirect_uri,
                    scope=code.scope,
                    resource=code.resource,
                    code_challenge=code.code_challenge,
                    expires_at=utc(code.expires_at),
                )
            )

        await self._run(work, write=True)

    async def take_code(self, code_hash: str) -> AuthCode | None:
        """Redeem a code: delete it and return it if it existed and had not expired (single use)."""

        def work(session: Session) -> AuthCode | None:
            row = session.get(AuthCodeRow, code_hash, with_for_update=True)
            if row is None:
                return None
            code = AuthCode(
                code_hash=row.code_hash,
                client_id=row.client_id,
                subject=row.subject,
                redirect_uri=row.redirect_uri,
                scope=row.scope,
                resource=row.resource,
                code_challenge=row.code_challenge,
                expires_at=row.expires_at,
            )
            deleted = session.execute(sa.delete(OAUTH_CODES).where(OAUTH_CODES.c.code_hash == code_hash))
            # Two replicas may read the row; only the one whose DELETE removed it wins.
            if deleted.rowcount != 1 or code.expires_at <= self._now():  # type: ignore[attr-defined]
                return None
            # Expired codes of anyone are dropped on the way: the table never grows.
            session.execute(sa.delete(OAUTH_CODES).where(OAUTH_CODES.c.expires_at <= self._now()))
            return code

        return await self._run(work, write=True)

    # -- refresh tokens ------------------------------------------------------------------

    async def save_refresh(self, grant: RefreshGrant) -> None:
        """Store a new refresh token (by hash)."""

        def work(session: Session) -> None:
            session.add(
                RefreshTokenRow(
                    token_hash=grant.token_hash,
                    family_id=grant.family_id,
                    client_id=grant.client_id,
                    subject=grant.subject,
                    scope=grant.scope,
                    resource=grant.resource,
                    expires_at=utc(grant.expires_at),
                    created_at=self._now(),
                )
            )

        await self._run(work, write=True)

    async def use_refresh(self, token_hash: str) -> tuple[RefreshGrant | None, bool]:
        """Mark a refresh token used; returns (grant, reused).

        A token used a second time means it leaked (OAuth 2.1 §4.3.1): its whole family is
        revoked and `reused` is True. Unknown, expired or revoked tokens give (None, False).
        """

        def work(session: Session) -> tuple[RefreshGrant | None, bool]:
            now = self._now()
            row = session.get(RefreshTokenRow, token_hash, with_for_update=True)
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return None, False
            marked = session.execute(
                sa.update(REFRESH_TOKENS)
                .where(REFRESH_TOKENS.c.token_hash == token_hash, REFRESH_TOKENS.c.used_at.is_(None))
                .values(used_at=now)
            )
            if marked.rowcount != 1:  # type: ignore[attr-defined]
                session.execute(
                    sa.update(REFRESH_TOKENS)
                    .where(REFRESH_TOKENS.c.family_id == row.family_id, REFRESH_TOKENS.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                return None, True
            return _refresh(row), False

        return await self._run(work, write=True)

    async def find_refresh(self, token_hash: str) -> RefreshGrant | None:
        """A refresh token by hash (for revocation), or None."""
        return await self._run(
            lambda s: None if (r := s.get(RefreshTokenRow, token_hash)) is None else _refresh(r)
        )

    async def revoke_refresh_family(self, family_id: str) -> int:
        """Revoke every token of a family; returns how many were live."""

        def work(session: Session) -> int:
            result = session.execute(
                sa.update(REFRESH_TOKENS)
                .where(REFRESH_TOKENS.c.family_id == family_id, REFRESH_TOKENS.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    async def revoke_refresh_for(self, *, client_id: str | None = None, subject: str | None = None) -> int:
        """Revoke every live refresh token of a client or a subject."""

        def work(session: Session) -> int:
            condition: sa.ColumnElement[bool] = REFRESH_TOKENS.c.revoked_at.is_(None)
            if client_id is not None:
                condition = sa.and_(condition, REFRESH_TOKENS.c.client_id == client_id)
            if subject is not None:
                condition = sa.and_(condition, REFRESH_TOKENS.c.subject == subject)
            result = session.execute(
                sa.update(REFRESH_TOKENS).where(condition).values(revoked_at=self._now())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    # -- access-token revocation ---------------------------------------------------------

    async def revoke_jti(self, jti: str, expires_at: datetime) -> None:
        """Record an access token as revoked until it would have expired (idempotent)."""

        def work(session: Session) -> None:
            if session.get(RevokedTokenRow, jti) is None:
                session.add(RevokedTokenRow(jti=jti, expires_at=utc(expires_at), revoked_at=self._now()))

        await self._run(work, write=True)

    async def revoked_jtis(self, since: datetime | None = None) -> list[tuple[str, datetime, datetime]]:
        """(jti, expires_at, revoked_at) of unexpired revocations, revoked after `since` if given."""

        def work(session: Session) -> list[tuple[str, datetime, datetime]]:
            query = sa.select(RevokedTokenRow).where(REVOKED_TOKENS.c.expires_at > self._now())
            if since is not None:
                query = query.where(REVOKED_TOKENS.c.revoked_at >= utc(since))
            return [(r.jti, r.expires_at, r.revoked_at) for r in session.scalars(query)]

        return await self._run(work)

    # -- consents ------------------------------------------------------------------------

    async def consented_scopes(self, subject: str, client_id: str) -> frozenset[str] | None:
        """The scopes `subject` approved for `client_id`, or None if never asked."""

        def work(session: Session) -> frozenset[str] | None:
            row = session.get(ConsentRow, (subject, client_id))
            return None if row is None else frozenset(row.scopes)

        return await self._run(work)

    async def save_consent(self, subject: str, client_id: str, scopes: frozenset[str]) -> None:
        """Record (or widen) a user's consent to a client."""

        def work(session: Session) -> None:
            row = session.get(ConsentRow, (subject, client_id), with_for_update=True)
            if row is None:
                session.add(
                    ConsentRow(
                        subject=subject, client_id=client_id, scopes=sorted(scopes), created_at=self._now()
                    )
                )
            else:
                row.scopes = sorted(set(row.scopes) | scopes)

        await self._run(work, write=True)


def _team(row: TeamRow) -> Team:
    return Team(name=row.name, description=row.description, created_at=row.created_at)


def _user(row: UserRow) -> User:
    return User(
        subject=row.subject,
        password_hash=row.password_hash,
        display_name=row.display_name,
        roles=tuple(row.roles or ()),
        teams=tuple(row.teams or ()),
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _refresh(row: RefreshTokenRow) -> RefreshGrant:
    return RefreshGrant(
        token_hash=row.token_hash,
        family_id=row.family_id,
        client_id=row.client_id,
        subject=row.subject,
        scope=row.scope,
        resource=row.resource,
        expires_at=row.expires_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
    )
