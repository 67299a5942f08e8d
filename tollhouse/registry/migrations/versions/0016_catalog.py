"""Catalog and discovery: upstream descriptions, tags, imported server.json and cache settings;
toolsets' disclosure mode; cached usage events; access requests.

Revision ID: 0016
Revises: 0015
Create Date: 2027-02-10 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Add the upstream catalog columns, usage_events.cached and the access_requests table."""
    with op.batch_alter_table("upstreams") as batch:
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("server_json", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("cache_ttl_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cache_scope", sa.String(), nullable=True))
    with op.batch_alter_table("toolsets") as batch:
        batch.add_column(sa.Column("disclosure", sa.String(), nullable=False, server_default="full"))
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(), primary_key=True),
        _time("created_at"),
        sa.Column("principal_key", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("client_id", sa.String(), nullable=True),
        sa.Column("team", sa.String(), nullable=True),
        sa.Column("user", sa.String(), nullable=True),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        _time("decided_at", nullable=True),
        sa.Column("decided_by", sa.String(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("policy_id", sa.String(), nullable=True),
        _time("expires_at", nullable=True),
    )
    op.create_index("ix_access_requests_principal_key", "access_requests", ["principal_key"])
    op.create_index("ix_access_requests_status_created", "access_requests", ["status", "created_at"])


def downgrade() -> None:
    """Drop what upgrade added."""
    op.drop_index("ix_access_requests_status_created", table_name="access_requests")
    op.drop_index("ix_access_requests_principal_key", table_name="access_requests")
    op.drop_table("access_requests")
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("cached")
    with op.batch_alter_table("toolsets") as batch:
        batch.drop_column("disclosure")
    with op.batch_alter_table("upstreams") as batch:
        for column in ("cache_scope", "cache_ttl_seconds", "server_json", "tags", "description"):
            batch.drop_column(column)
