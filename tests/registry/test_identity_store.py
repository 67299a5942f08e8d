"""SqlIdentityStore on SQLite and PostgreSQL: users, teams, single-use codes, refresh rotation, revocation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.migrate import create_engine_for, upgrade
from tollhouse.registry.models import AuthCode, RefreshGrant, Team, User
from tollhouse.registry.store import StoreConflictError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def identity(database_url: str) -> AsyncIterator[SqlIdentityStore]:
    await anyio.to_thread.run_sync(upgrade, database_url)
    engine = create_engine_for(database_url)
    try:
        yield SqlIdentityStore(engine)
    finally:
        engine.dispose()


def code(code_hash: str, *, expires_in: float = 60) -> AuthCode:
    return AuthCode(
        code_hash=code_hash,
        client_id="https://app.example/client.json",
        subject="alice",
        redirect_uri="http://127.0.0.1:5000/cb",
        scope="mcp",
        resource="https://gw.example/mcp",
        code_challenge="x" * 43,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
    )


def refresh(token_hash: str, family: str = "fam") -> RefreshGrant:
    return RefreshGrant(
        token_hash=token_hash,
        family_id=family,
        client_id="client",
        subject="alice",
        scope="mcp",
        resource="https://gw.example/mcp",
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )


async def test_users_and_teams_round_trip_and_names_are_unique(identity: SqlIdentityStore) -> None:
    await identity.create_team(Team(name="platform", description="the platform team"))
    with pytest.raises(StoreConflictError):
        await identity.create_team(Team(name="platform"))
    user = await identity.create_user(
        User(subject="alice", password_hash="$argon2id$x", roles=("admin",), teams=("platform",))
    )
    assert user.created_at is not None
    with pytest.raises(StoreConflictError):
        await identity.create_user(User(subject="alice"))
    updated = await identity.update_user("alice", roles=("viewer",), disabled=True)
    assert updated is not None and updated.roles == ("viewer",) and updated.disabled
    assert await identity.update_user("nobody", disabled=True) is None
    assert [u.subject for u in await identity.list_users()] == ["alice"]
    assert [t.name for t in await identity.list_teams()] == ["platform"]
    assert await identity.delete_user("alice")
    assert not await identity.delete_user("alice")
    assert await identity.delete_team("platform")


async def test_an_authorization_code_is_redeemed_once_and_never_after_expiry(
    identity: SqlIdentityStore,
) -> None:
    await identity.save_code(code("h1"))
    first = await identity.take_code("h1")
    assert first is not None and first.subject == "alice"
    assert await identity.take_code("h1") is None
    await identity.save_code(code("h2", expires_in=-1))
    assert await identity.take_code("h2") is None


async def test_concurrent_redemptions_of_one_code_have_one_winner(identity: SqlIdentityStore) -> None:
    await identity.save_code(code("race"))
    results: list[AuthCode | None] = []

    async def redeem() -> None:
        results.append(await identity.take_code("race"))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(redeem)
    assert sum(r is not None for r in results) == 1


async def test_a_refresh_token_rotates_once_and_reuse_revokes_its_family(identity: SqlIdentityStore) -> None:
    await identity.save_refresh(refresh("r1"))
    grant, reused = await identity.use_refresh("r1")
    assert grant is not None and not reused
    await identity.save_refresh(refresh("r2"))
    # r1 again: a leaked token — refused, and the whole family (r2 too) is revoked.
    grant, reused = await identity.use_refresh("r1")
    assert grant is None and reused
    grant, reused = await identity.use_refresh("r2")
    assert grant is None and not reused
    stored = await identity.find_refresh("r2")
    assert stored is not None and stored.revoked_at is not None


async def test_refresh_tokens_of_a_client_or_subject_can_be_revoked(identity: SqlIdentityStore) -> None:
    await identity.save_refresh(refresh("a", "f1"))
    await identity.save_refresh(refresh("b", "f2"))
    assert await identity.revoke_refresh_for(client_id="client") == 2
    assert await identity.revoke_refresh_for(subject="alice") == 0
    assert (await identity.use_refresh("a"))[0] is None


async def test_revoked_access_tokens_are_listed_until_they_expire(identity: SqlIdentityStore) -> None:
    now = datetime.now(UTC)
    await identity.revoke_jti("j1", now + timedelta(minutes=5))
    await identity.revoke_jti("j1", now + timedelta(minutes=5))  # idempotent
    await identity.revoke_jti("old", now - timedelta(minutes=1))
    listed = await identity.revoked_jtis()
    assert [jti for jti, _, _ in listed] == ["j1"]
    assert await identity.revoked_jtis(now + timedelta(minutes=1)) == []


async def test_consent_is_recorded_per_user_and_client_and_only_widens(identity: SqlIdentityStore) -> None:
    assert await identity.consented_scopes("alice", "app") is None
    await identity.save_consent("alice", "app", frozenset({"mcp"}))
    await identity.save_consent("alice", "app", frozenset({"a2a"}))
    assert await identity.consented_scopes("alice", "app") == frozenset({"mcp", "a2a"})
    assert await identity.consented_scopes("bob", "app") is None
