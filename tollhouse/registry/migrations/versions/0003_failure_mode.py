"""Per-upstream failure mode for aggregation: fail-open (default) or fail-closed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add upstreams.failure_mode, 'open' for the existing rows."""
    with op.batch_alter_table("upstreams") as batch:
        batch.add_column(sa.Column("failure_mode", sa.String(), nullable=False, server_default="open"))


def downgrade() -> None:
    """Drop upstreams.failure_mode."""
    with op.batch_alter_table("upstreams") as batch:
        batch.drop_column("failure_mode")
