"""The audit trail's action index also carries outcome, server and tool.

The console's overview counts the last hour's calls per minute, outcome and tool. With those
columns in the (action, time, …) index that count reads the index alone, whatever the traffic;
the index is widened rather than a new one added, so writing a record costs no extra index.

Revision ID: 0013
Revises: 0012
Create Date: 2027-01-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_audit_records_action_time"


def upgrade() -> None:
    """Recreate the action index with outcome, server and tool after its page order."""
    op.drop_index(INDEX, table_name="audit_records")
    op.create_index(INDEX, "audit_records", ["action", "time", "node", "seq", "outcome", "server", "tool"])


def downgrade() -> None:
    """Back to (action, time, node, seq)."""
    op.drop_index(INDEX, table_name="audit_records")
    op.create_index(INDEX, "audit_records", ["action", "time", "node", "seq"])
