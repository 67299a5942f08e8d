"""Initial registry schema: upstreams, their catalogs, API clients and settings.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the registry tables."""
    op.create_table(
        "upstreams",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("transport", sa.String(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("cwd", sa.Text(), nullable=True),
        sa.Column("auth", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("approval", sa.String(), nullable=False),
        sa.Column("connect_timeout_seconds", sa.Float(), nullable=False),
        sa.Column("call_timeout_seconds", sa.Float(), nullable=False),
        sa.Column("health_status", sa.String(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _timestamp("checked_at", nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "upstream_meta",
        sa.Column("server", sa.String(), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("server_info", sa.JSON(), nullable=False),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("protocol_version", sa.String(), nullable=True),
        _timestamp("synced_at"),
        sa.PrimaryKeyConstraint("server"),
        sa.ForeignKeyConstraint(["server"], ["upstreams.name"], ondelete="CASCADE"),
    )
    op.create_table(
        "catalog_entries",
        sa.Column("server", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        _timestamp("seen_at"),
        sa.PrimaryKeyConstraint("server", "kind", "key"),
        sa.ForeignKeyConstraint(["server"], ["upstreams.name"], ondelete="CASCADE"),
    )
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("team", sa.String(), nullable=True),
        sa.Column("key_hash", sa.String(), nullable=True),
        sa.Column("key_prefix", sa.String(), nullable=True),
        _timestamp("created_at"),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("client_id"),
        sa.UniqueConstraint("name", name="uq_clients_name"),
    )
    op.create_index("ix_clients_key_hash", "clients", ["key_hash"], unique=True)
    op.create_table(
        "settings_kv",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    """Drop the registry tables."""
    op.drop_table("settings_kv")
    op.drop_index("ix_clients_key_hash", table_name="clients")
    op.drop_table("clients")
    op.drop_table("catalog_entries")
    op.drop_table("upstream_meta")
    op.drop_table("upstreams")
