"""Audit records get filter columns (who, what, outcome, trace) and the indexes that page them.

Each filter column has an index ending in the page order (time, node, seq), so a filtered,
newest-first page of `GET /audit/records` is one index range scan at any trail size. Records
written before this revision get their columns filled from their JSON here.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-10 00:00:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("kind", "action", "subject", "client_id", "team", "server", "tool", "outcome", "trace_id")
FILTERED = ("kind", "action", "subject", "client_id", "team", "server", "tool", "outcome")
# Longer values are not copied (the record keeps them): a client-chosen tool name must not be
# able to exceed an index entry's size limit and so make the whole batch fail to commit.
MAX_LENGTH = 256
PAGE = 1000


def upgrade() -> None:
    """Add the columns and their indexes, then fill them for existing records."""
    for column in COLUMNS:
        op.add_column("audit_records", sa.Column(column, sa.String(), nullable=True))
    for column in FILTERED:
        op.create_index(f"ix_audit_records_{column}_time", "audit_records", [column, "time", "node", "seq"])
    op.create_index("ix_audit_records_trace_id", "audit_records", ["trace_id"])
    _backfill()


def downgrade() -> None:
    """Drop the indexes and the columns."""
    op.drop_index("ix_audit_records_trace_id", table_name="audit_records")
    for column in FILTERED:
        op.drop_index(f"ix_audit_records_{column}_time", table_name="audit_records")
    with op.batch_alter_table("audit_records") as batch:
        for column in COLUMNS:
            batch.drop_column(column)


def _backfill() -> None:
    table = sa.table(
        "audit_records",
        sa.column("node", sa.String()),
        sa.column("seq", sa.BigInteger()),
        sa.column("record", sa.Text()),
        *(sa.column(c, sa.String()) for c in COLUMNS),
    )
    conn = op.get_bind()
    after: tuple[str, int] | None = None
    while True:
        query = sa.select(table.c.node, table.c.seq, table.c.record).order_by(table.c.node, table.c.seq)
        if after is not None:
            query = query.where(sa.tuple_(table.c.node, table.c.seq) > sa.tuple_(*after))
        rows = conn.execute(query.limit(PAGE)).all()
        for row in rows:
            conn.execute(
                sa.update(table)
                .where(table.c.node == row.node, table.c.seq == row.seq)
                .values(_columns(json.loads(row.record)))
            )
        if len(rows) < PAGE:
            return
        after = (rows[-1].node, rows[-1].seq)


def _columns(record: dict[str, Any]) -> dict[str, str | None]:
    """The filter columns of one record (the same rule as SqlAuditStore.append at this revision)."""

    def part(name: str) -> dict[str, Any]:
        value = record.get(name)
        return value if isinstance(value, dict) else {}

    teams = part("who").get("teams")
    values = {
        "kind": record.get("kind"),
        "action": record.get("action"),
        "subject": part("who").get("subject"),
        "client_id": part("who").get("client_id"),
        "team": teams[0] if isinstance(teams, list) and teams else None,
        "server": part("what").get("server"),
        "tool": part("what").get("tool"),
        "outcome": part("outcome").get("result"),
        "trace_id": part("correlation").get("trace_id"),
    }
    return {k: v if isinstance(v, str) and len(v) <= MAX_LENGTH else None for k, v in values.items()}
