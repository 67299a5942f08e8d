"""Alembic migrations of the registry schema; run them with `tollhouse.registry.migrate.upgrade`."""
