"""Encrypted upstream credentials: per-upstream secrets and per-user upstream tokens.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-20 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create upstream_secrets and user_upstream_tokens (ciphertexts only, never plaintext)."""
    op.create_table(
        "upstream_secrets",
        sa.Column("upstream", sa.String(), nullable=False),
        sa.Column("field", sa.String(), nullable=False),
        sa.Column("kid", sa.String(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["upstream"], ["upstreams.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upstream", "field"),
    )
    op.create_table(
        "user_upstream_tokens",
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("upstream", sa.String(), nullable=False),
        sa.Column("kid", sa.String(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["upstream"], ["upstreams.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subject", "upstream"),
    )


def downgrade() -> None:
    """Drop both credential tables."""
    op.drop_table("user_upstream_tokens")
    op.drop_table("upstream_secrets")
