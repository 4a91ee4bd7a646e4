"""An index for the claim's search for spent steps (gateway/storage/sqlite_pipeline.py ``_SPENT``,
gateway/storage/pipeline.py ``bury_spent``): the due pending steps whose budget of attempts is spent. Nearly none
ever are, and by ``ix_deprovision_steps_due`` alone each claim read every due pending step to find that out: in a
bulk offboarding of 10,000 agents some 20,000 rows per claim, hundreds of claims, about a third of the gateway's
CPU and a time that grew with the square of the agents. By (state, attempts) it is a lookup of the few rows with
``attempts >= max_attempts``.

Online: a previous release ignores the index. Built in the migration's one transaction (``gateway/storage/migrate.py``
holds every migration in one, under its lock), so not ``CONCURRENTLY``: on PostgreSQL the pipeline's writes to
``deprovision_steps`` wait while it is built (well under a second per million steps), and go on after.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ["state", "attempts", "next_attempt_at"]


def upgrade() -> None:
    op.create_index("ix_deprovision_steps_spent", "deprovision_steps", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_deprovision_steps_spent", table_name="deprovision_steps")
