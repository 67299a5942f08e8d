"""Identity: users, teams, OAuth clients, codes, refresh tokens, revocations, consents; tool scopes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the identity tables; add OAuth columns to clients and step-up scopes to upstreams."""
    with op.batch_alter_table("upstreams") as batch:
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("secret_hash", sa.String(), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(), nullable=False, server_default="confidential"))
        batch.add_column(sa.Column("registration", sa.String(), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("redirect_uris", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("grant_types", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("client_name", sa.Text(), nullable=True))
    op.create_table(
        "teams",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "users",
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("teams", sa.JSON(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("subject"),
    )
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.String(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("code_hash"),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("family_id", sa.String(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"])
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_index("ix_revoked_tokens_revoked_at", "revoked_tokens", ["revoked_at"])
    op.create_table(
        "consents",
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("subject", "client_id"),
    )


def downgrade() -> None:
    """Drop the identity tables and columns."""
    for table in ("consents", "revoked_tokens", "refresh_tokens", "oauth_codes", "users", "teams"):
        op.drop_table(table)
    with op.batch_alter_table("clients") as batch:
        for column in ("client_name", "scopes", "grant_types", "redirect_uris", "registration", "kind"):
            batch.drop_column(column)
        batch.drop_column("secret_hash")
    with op.batch_alter_table("upstreams") as batch:
        batch.drop_column("scopes")
