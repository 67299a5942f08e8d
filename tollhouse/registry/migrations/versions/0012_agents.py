"""A2A agents: their options, their last fetched card, and who owns each task made through the gateway.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-20 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add upstreams.a2a and upstream_meta.card; create a2a_tasks."""
    with op.batch_alter_table("upstreams") as batch:
        batch.add_column(sa.Column("a2a", sa.JSON(), nullable=True))
    with op.batch_alter_table("upstream_meta") as batch:
        batch.add_column(sa.Column("card", sa.JSON(), nullable=True))
    op.create_table(
        "a2a_tasks",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("context_id", sa.String(), nullable=True),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["agent"], ["upstreams.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("agent", "task_id"),
    )
    op.create_index("ix_a2a_tasks_context_id", "a2a_tasks", ["context_id"])


def downgrade() -> None:
    """Drop a2a_tasks and the two columns."""
    op.drop_index("ix_a2a_tasks_context_id", table_name="a2a_tasks")
    op.drop_table("a2a_tasks")
    with op.batch_alter_table("upstream_meta") as batch:
        batch.drop_column("card")
    with op.batch_alter_table("upstreams") as batch:
        batch.drop_column("a2a")
