"""Logouts remembered for the sweep after a session-store outage (gateway/deprovision/logouts.py): ``session_ends``.

A restarted or failed-over Redis can bring back a session a logout ended; the agent is still active, so only this
record of the logout lets the sweep end it again. Rows live for the longest a session can, then are pruned. A new
table only: online (a previous release ignores it).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_ends",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("session_key", sa.String(64)),
        sa.Column("sid", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_session_ends"),
    )
    op.create_index("ix_session_ends_ended_at", "session_ends", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_session_ends_ended_at", table_name="session_ends")
    op.drop_table("session_ends")
