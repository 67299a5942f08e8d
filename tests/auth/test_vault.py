"""Credential encryption at rest (SECURITY_GOALS K1, K2): the cipher, the sealed store, rotation."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.databases import scratch_postgres
from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.vault import CredentialCipher, VaultError, upstream_secret_aad, user_token_aad
from tollhouse.registry.migrate import create_engine_for, database_url_for
from tollhouse.registry.models import Upstream
from tollhouse.registry.secrets_store import SqlSecretStore
from tollhouse.registry.store import SqlRegistryStore, open_sql_store

pytestmark = pytest.mark.anyio

SECRET = "s3cret-upstream-token-VALUE"


def cipher_of(ring: KeyRing) -> CredentialCipher:
    return CredentialCipher.from_keyring(ring)


# -- the cipher ----------------------------------------------------------------------------


def test_a_sealed_value_names_its_key_and_opens_only_for_its_row() -> None:
    ring = KeyRing.generate()
    cipher = cipher_of(ring)
    aad = upstream_secret_aad("calc", "token")

    sealed = cipher.encrypt(SECRET, aad)

    version, kid, body = sealed.split(".")
    assert (version, kid) == ("v1", ring.active_kid)
    assert CredentialCipher.kid_of(sealed) == ring.active_kid
    assert SECRET not in sealed and SECRET.encode() not in base64.urlsafe_b64decode(body + "==")
    assert cipher.decrypt(sealed, aad) == SECRET.encode()
    assert cipher.encrypt(SECRET, aad) != sealed  # a fresh 96-bit nonce each time
    for other in (upstream_secret_aad("calc", "value"), upstream_secret_aad("calc2", "token")):
        with pytest.raises(VaultError):
            cipher.decrypt(sealed, other)


def test_tampering_unknown_keys_and_garbage_are_refused_without_echoing_the_value() -> None:
    cipher = cipher_of(KeyRing.generate())
    aad = user_token_aad("tollhouse|alice", "files")
    sealed = cipher.encrypt(SECRET, aad)
    version, kid, body = sealed.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]

    cases = [
        f"{version}.{kid}.{flipped}",
        f"{version}.kother.{body}",
        f"v2.{kid}.{body}",
        "v1.k.AAAA",
        "not sealed",
        "",
    ]
    for bad in cases:
        with pytest.raises(VaultError) as caught:
            cipher.decrypt(bad, aad)
        assert SECRET not in str(caught.value)
    # Another key ring's cipher does not know this key id at all.
    with pytest.raises(VaultError, match="not configured"):
        cipher_of(KeyRing.generate()).decrypt(sealed, aad)


def test_after_rotation_old_values_open_and_new_ones_use_the_new_key() -> None:
    ring = KeyRing.generate()
    old = cipher_of(ring).encrypt(SECRET, "a")
    rotated = cipher_of(ring.rotated())

    assert rotated.decrypt(old, "a") == SECRET.encode()
    renewed = rotated.reencrypt(old, "a")
    assert CredentialCipher.kid_of(renewed) == rotated.active_kid != ring.active_kid
    assert rotated.reencrypt(renewed, "a") == renewed
    with pytest.raises(VaultError):
        cipher_of(ring).decrypt(renewed, "a")  # the old ring never learns the new key


def test_the_cipher_refuses_unusable_keys() -> None:
    with pytest.raises(ValueError):
        CredentialCipher({"k1": b"x" * 16}, "k1")
    with pytest.raises(ValueError):
        CredentialCipher({"k1": b"x" * 32}, "k2")


# -- the sealed store on SQLite and PostgreSQL ---------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own."""
    if request.param == "sqlite":
        yield database_url_for(None, str(tmp_path / "data"))
        return
    with scratch_postgres(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
async def registry(database_url: str) -> AsyncIterator[SqlRegistryStore]:
    store = await open_sql_store(database_url, "unused")
    try:
        for name in ("calc", "files"):
            await store.create_upstream(Upstream(name=name, url=f"http://127.0.0.1:1/{name}"))
        yield store
    finally:
        await store.close()


@pytest.fixture
async def engine(registry: SqlRegistryStore, database_url: str) -> AsyncIterator[sa.Engine]:
    engine = create_engine_for(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def raw_rows(engine: sa.Engine, table: str) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text(f"SELECT * FROM {table}"))]  # noqa: S608


async def test_the_stored_row_does_not_contain_the_secret(engine: sa.Engine) -> None:
    ring = KeyRing.generate()
    store = SqlSecretStore(engine, cipher_of(ring))

    await store.put_secret("calc", "token", SECRET)
    await store.put_user_token("tollhouse|alice", "files", SECRET.encode())

    for table in ("upstream_secrets", "user_upstream_tokens"):
        (row,) = raw_rows(engine, table)
        assert row["kid"] == ring.active_kid
        dump = repr(row)
        assert SECRET not in dump
        assert base64.b64encode(SECRET.encode()).decode()[:16] not in dump
    assert await store.get_secret("calc", "token") == SECRET
    assert await store.get_user_token("tollhouse|alice", "files") == SECRET.encode()
    assert await store.secret_fields() == {"calc": ["token"]}


async def test_swapping_two_rows_ciphertexts_makes_both_fail_to_decrypt(engine: sa.Engine) -> None:
    store = SqlSecretStore(engine, cipher_of(KeyRing.generate()))
    await store.put_secret("calc", "token", "calc-token")
    await store.put_secret("files", "token", "files-token")
    await store.put_user_token("tollhouse|alice", "files", b"alice")
    await store.put_user_token("tollhouse|bob", "files", b"bob")

    with engine.begin() as conn:
        for table, key, first, second in (
            ("upstream_secrets", "upstream", "calc", "files"),
            ("user_upstream_tokens", "subject", "tollhouse|alice", "tollhouse|bob"),
        ):
            query = sa.text(f"SELECT {key}, ciphertext FROM {table}")  # noqa: S608
            rows: dict[str, str] = {k: c for k, c in conn.execute(query).all()}
            for target, source in ((first, second), (second, first)):
                conn.execute(
                    sa.text(f"UPDATE {table} SET ciphertext = :c WHERE {key} = :k"),  # noqa: S608
                    {"c": rows[source], "k": target},
                )

    for name in ("calc", "files"):
        with pytest.raises(VaultError):
            await store.get_secret(name, "token")
    for subject in ("tollhouse|alice", "tollhouse|bob"):
        with pytest.raises(VaultError):
            await store.get_user_token(subject, "files")


async def test_rotation_reencrypts_every_row_and_then_the_old_key_can_go(engine: sa.Engine) -> None:
    ring = KeyRing.generate()
    store = SqlSecretStore(engine, cipher_of(ring))
    await store.put_secret("calc", "token", "calc-token")
    await store.put_secret("files", "client_secret", "files-secret")
    await store.put_user_token("tollhouse|alice", "files", b"alice-tokens")
    assert await store.rows_by_kid() == {ring.active_kid: 3}

    rotated = ring.rotated()
    report = await store.reencrypt_all(cipher_of(rotated))

    assert report.active_kid == rotated.active_kid
    assert report.reencrypted == 3
    assert report.rows_by_kid == {rotated.active_kid: 3}
    assert {row["kid"] for row in raw_rows(engine, "upstream_secrets")} == {rotated.active_kid}
    # Without the old key everything still opens.
    only_new = SqlSecretStore(engine, cipher_of(rotated.without(ring.active_kid)))
    assert await only_new.get_secret("calc", "token") == "calc-token"
    assert await only_new.get_secret("files", "client_secret") == "files-secret"
    assert await only_new.get_user_token("tollhouse|alice", "files") == b"alice-tokens"
    assert (await store.reencrypt_all()).reencrypted == 0  # idempotent


async def test_a_row_that_does_not_authenticate_stops_rotation_and_nothing_changes(engine: sa.Engine) -> None:
    ring = KeyRing.generate()
    store = SqlSecretStore(engine, cipher_of(ring))
    await store.put_secret("calc", "token", "calc-token")
    await store.put_secret("files", "token", "files-token")
    with engine.begin() as conn:
        moved = conn.execute(
            sa.text("SELECT ciphertext FROM upstream_secrets WHERE upstream = 'calc'")
        ).scalar()
        conn.execute(
            sa.text("UPDATE upstream_secrets SET ciphertext = :c WHERE upstream = 'files'"), {"c": moved}
        )

    with pytest.raises(VaultError, match="files/token"):
        await store.reencrypt_all(cipher_of(ring.rotated()))

    assert {row["kid"] for row in raw_rows(engine, "upstream_secrets")} == {ring.active_kid}


async def test_deleting_an_upstream_deletes_its_secrets_and_user_tokens(
    registry: SqlRegistryStore, engine: sa.Engine
) -> None:
    store = SqlSecretStore(engine, cipher_of(KeyRing.generate()))
    await store.put_secret("calc", "token", "calc-token")
    await store.put_user_token("tollhouse|alice", "calc", b"t")
    await store.put_secret("files", "token", "files-token")

    assert await registry.delete_upstream("calc")

    assert await store.get_secret("calc", "token") is None
    assert await store.get_user_token("tollhouse|alice", "calc") is None
    assert await store.get_secret("files", "token") == "files-token"
    assert await store.delete_user_token("tollhouse|alice", "calc") is False
