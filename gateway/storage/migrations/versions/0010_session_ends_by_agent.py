"""An index of ``session_ends`` by agent: every session believed shortly after a session-store outage is checked
against its agent's saved ends (gateway/deprovision/revived.py ``RevivedSessions.believed``), one indexed read.
Online: a previous release ignores it; the table holds at most the ends of the longest session lifetime.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_session_ends_agent_id_ended_at", "session_ends", ["agent_id", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_session_ends_agent_id_ended_at", table_name="session_ends")
