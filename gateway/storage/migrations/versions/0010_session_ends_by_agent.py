"""Indexes of ``session_ends`` for the check of every session used shortly after a session-store outage against the
saved ends that may have ended it (gateway/deprovision/revived.py ``RevivedSessions.believed``): a logout by the
session's storage key, and an agent's latest end of each kind. Each is one index lookup, never a scan of an agent's
other logouts. Online: a previous release ignores them; the table holds at most the ends of the longest session
lifetime.

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
    op.create_index("ix_session_ends_session_key", "session_ends", ["session_key"])
    op.create_index("ix_session_ends_agent_kind_ended_at", "session_ends", ["agent_id", "kind", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_session_ends_agent_kind_ended_at", table_name="session_ends")
    op.drop_index("ix_session_ends_session_key", table_name="session_ends")
