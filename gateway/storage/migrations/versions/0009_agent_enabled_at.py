"""When an agent was last made active again: ``agents.enabled_at``.

A Shared Signals transmitter retries a push the gateway missed, so an ``account-disabled`` can arrive hours after
it was issued; if the agent was made active again since (SCIM, the directory, an admin), acting on it would undo
that (gateway/signals/receiver.py). ``updated_at`` cannot tell: any change bumps it. Nullable, no backfill (an agent
never re-enabled since this release counts as active since its creation). Online: a previous release ignores it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("agents", sa.Column("enabled_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("enabled_at")
