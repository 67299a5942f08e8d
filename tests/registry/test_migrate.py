"""Database URLs, engines and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tollhouse.registry.migrate import alembic_config, create_engine_for, database_url_for, upgrade
from tollhouse.registry.tables import metadata

HEAD = "0016"
TABLES = {
    "alembic_version",
    "upstreams",
    "a2a_tasks",
    "change_notices",
    "access_requests",
    "upstream_meta",
    "catalog_entries",
    "clients",
    "settings_kv",
    "toolsets",
    "upstream_secrets",
    "user_upstream_tokens",
    "teams",
    "users",
    "oauth_codes",
    "refresh_tokens",
    "revoked_tokens",
    "consents",
    "tool_pins",
    "policies",
    "limits",
    "kill_switches",
    "usage_events",
    "usage_outbox",
    "audit_records",
    "audit_checkpoints",
}


def inspect(url: str) -> tuple[set[str], list[str]]:
    """(table names, alembic revisions) of the database at `url`."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            revisions = list(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))
        return tables, revisions
    finally:
        engine.dispose()


def test_no_url_means_sqlite_in_the_data_dir_which_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / ".tollhouse"

    url = database_url_for(None, str(data_dir))

    assert url == f"sqlite:///{data_dir}/tollhouse.db"
    assert data_dir.is_dir()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p%40ss@db:5432/th", "postgresql+psycopg://u:p%40ss@db:5432/th"),
        ("postgres://db/th?sslmode=require", "postgresql+psycopg://db/th?sslmode=require"),
        ("postgresql+psycopg://db/th", "postgresql+psycopg://db/th"),
        ("postgresql+psycopg2://db/th", "postgresql+psycopg2://db/th"),
        ("sqlite:////var/lib/th.db", "sqlite:////var/lib/th.db"),
    ],
)
def test_plain_postgres_urls_get_psycopg_and_others_are_unchanged(
    url: str, expected: str, tmp_path: Path
) -> None:
    assert database_url_for(url, str(tmp_path / "unused")) == expected
    assert not (tmp_path / "unused").exists()


def test_upgrading_twice_leaves_the_schema_at_one_head(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)

    tables, revisions = inspect(database_url)
    assert tables == TABLES
    assert revisions == [HEAD]


def test_the_migrated_schema_matches_the_tables(database_url: str) -> None:
    upgrade(database_url)

    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_replicas_upgrading_one_database_at_once_all_succeed(database_url: str) -> None:
    # Separate processes, as replicas are; each waits for "go" so they race into the empty database together.
    child = (
        "import sys\n"
        "from tollhouse.registry.migrate import upgrade\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "upgrade(sys.argv[1])\n"
    )
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", child, database_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None and replica.stdout.readline() == "ready\n"
        for replica in replicas:
            assert replica.stdin is not None
            replica.stdin.write("go\n")
            replica.stdin.flush()
        for replica in replicas:
            _, stderr = replica.communicate(timeout=60)
            assert replica.returncode == 0, stderr
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
                replica.communicate()

    assert inspect(database_url)[1] == [HEAD]


def test_concurrent_upgrades_in_one_process_all_succeed(database_url: str) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(upgrade, database_url) for _ in range(3)]:
            future.result(timeout=60)

    assert inspect(database_url)[1] == [HEAD]


def test_downgrade_to_base_drops_every_table_and_upgrade_restores_them(database_url: str) -> None:
    upgrade(database_url)

    command.downgrade(alembic_config(url=database_url), "base")
    assert inspect(database_url) == ({"alembic_version"}, [])

    upgrade(database_url)
    assert inspect(database_url)[0] == TABLES


def test_sqlite_connections_use_wal_and_enforce_foreign_keys(tmp_path: Path) -> None:
    url = database_url_for(None, str(tmp_path))
    upgrade(url)
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            row = {"server": "ghost", "capabilities": {}, "server_info": {}, "synced_at": datetime.now(UTC)}
            conn.execute(sa.insert(metadata.tables["upstream_meta"]).values(row))
    finally:
        engine.dispose()


def test_an_in_memory_sqlite_database_is_one_database_for_every_thread() -> None:
    engine = create_engine_for("sqlite://")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")

        def count() -> int:
            with engine.connect() as conn:
                return int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one())

        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(count).result(timeout=10) == 0
    finally:
        engine.dispose()


def test_audit_records_written_before_0011_get_their_filter_columns(database_url: str) -> None:
    record = {
        "kind": "mcp",
        "action": "tools/call",
        "who": {"subject": "alice", "client_id": "c_1", "teams": ["platform", "finance"]},
        "what": {"server": "calc", "tool": "x" * 300},
        "outcome": {"result": "ok"},
        "correlation": {"trace_id": "ab" * 16},
    }
    command.upgrade(alembic_config(url=database_url), "0010")
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO audit_records (node, seq, time, hash, record) VALUES ('gw', 1, :t, 'h', :r)"
                ),
                {"t": datetime(2026, 11, 23, tzinfo=UTC), "r": json.dumps(record)},
            )
        upgrade(database_url)
        with engine.connect() as conn:
            row = conn.execute(sa.select(metadata.tables["audit_records"])).one()
    finally:
        engine.dispose()

    assert (row.kind, row.action, row.subject, row.client_id, row.team) == (
        "mcp",
        "tools/call",
        "alice",
        "c_1",
        "platform",
    )
    # A value too long for an index entry is left out of its column (the record keeps it).
    assert (row.server, row.tool, row.outcome, row.trace_id) == ("calc", None, "ok", "ab" * 16)
