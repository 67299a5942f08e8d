"""Authorization policies (Cedar text and the sugar they were written in); trusted servers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the policies table; add upstreams.trusted (false for the existing rows)."""
    with op.batch_alter_table("upstreams") as batch:
        batch.add_column(sa.Column("trusted", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "policies",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("cedar", sa.Text(), nullable=False),
        sa.Column("sugar", sa.JSON(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("updated_by", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    """Drop the policies table and upstreams.trusted."""
    op.drop_table("policies")
    with op.batch_alter_table("upstreams") as batch:
        batch.drop_column("trusted")
