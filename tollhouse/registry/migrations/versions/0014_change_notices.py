"""Change notices between replicas: a log every replica follows (gateway/changes.py).

Revision ID: 0014
Revises: 0013
Create Date: 2027-01-20 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create change_notices."""
    op.create_table(
        "change_notices",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_change_notices_at", "change_notices", ["at"])


def downgrade() -> None:
    """Drop change_notices."""
    op.drop_index("ix_change_notices_at", table_name="change_notices")
    op.drop_table("change_notices")
