"""Database URLs, engines and schema migrations (Alembic, configured in code: no alembic.ini).

SQLite is the zero-setup default; PostgreSQL is for production, where several replicas may
start at once, so `upgrade` serialises itself there with an advisory lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.pool import StaticPool

__all__ = ["alembic_config", "create_engine_for", "database_url_for", "upgrade", "with_write_lock"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
# Any fixed 64-bit key works; this one spells "tollhous", so it is unlikely to meet another app's.
_MIGRATION_LOCK_ID = 0x746F6C6C686F7573
# alembic's `context` and `op` are module-level proxies: one migration at a time per process.
_ALEMBIC_LOCK = threading.Lock()
# Execution option asking the SQLite begin hook for BEGIN IMMEDIATE (take the write lock up front).
_SQLITE_IMMEDIATE = "tollhouse_sqlite_immediate"


def database_url_for(url: str | None, data_dir: str) -> str:
    """The SQLAlchemy URL to use: SQLite under `data_dir` by default, psycopg 3 for plain PostgreSQL URLs."""
    if url is None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{data_dir}/tollhouse.db"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


def create_engine_for(url: str) -> sa.Engine:
    """A sync engine tuned for the backend: WAL and foreign keys on SQLite, pre-ping on PostgreSQL."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800)
    in_memory = parsed.database in (None, "", ":memory:")
    engine = sa.create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        # One shared connection, or each worker thread would see its own empty memory database.
        poolclass=StaticPool if in_memory else None,
    )
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # sqlite3's legacy mode skips BEGIN before SELECT and DDL; SQLAlchemy emits BEGIN itself
    # (below), so reads are repeatable and migrations are transactional (SQLAlchemy SQLite docs).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: sa.Connection) -> None:
    immediate = connection.get_execution_options().get(_SQLITE_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def with_write_lock(engine: sa.Engine) -> sa.Engine:
    """`engine` (same pool) whose SQLite transactions take the write lock at BEGIN, for read-then-write work.

    In WAL mode a deferred transaction that read and then tries to write after another writer
    committed fails at once with SQLITE_BUSY; BEGIN IMMEDIATE waits for the lock instead.
    """
    return (
        engine.execution_options(**{_SQLITE_IMMEDIATE: True}) if engine.dialect.name == "sqlite" else engine
    )


def alembic_config(url: str | None = None, connection: sa.Connection | None = None) -> Config:
    """An Alembic config for the registry migrations, on `connection` or else on `url`."""
    config = Config(attributes={"connection": connection} if connection is not None else {})
    # set_main_option interpolates '%', which may appear in paths and URL-encoded passwords.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the newest schema; a no-op when it is already there."""
    engine = create_engine_for(url)
    try:
        with _ALEMBIC_LOCK, with_write_lock(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                # Held to the end of this transaction: a second replica waits, then finds head.
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
            command.upgrade(alembic_config(connection=connection), "head")
    finally:
        engine.dispose()
