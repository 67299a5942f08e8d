"""Alembic environment: migrates on the connection `migrate.upgrade` passes, or on `sqlalchemy.url`."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from tollhouse.registry.migrate import create_engine_for
from tollhouse.registry.tables import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("tollhouse migrations run online only")
    connection: sa.Connection | None = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no connection and no sqlalchemy.url: use tollhouse.registry.migrate")
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


_main()
