"""Upstream protection: a per-server in-flight cap and the tools an admin marked idempotent.

Revision ID: 0015
Revises: 0014
Create Date: 2027-01-21 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add upstreams.max_in_flight (null: the gateway default) and upstreams.idempotent (none)."""
    with op.batch_alter_table("upstreams") as batch:
        batch.add_column(sa.Column("max_in_flight", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("idempotent", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    """Drop both columns."""
    with op.batch_alter_table("upstreams") as batch:
        batch.drop_column("idempotent")
        batch.drop_column("max_in_flight")
