"""Access-log stubs that prove their head: ``rest_hash`` on purged records (gateway/audit/canonical.py, format
cg2).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ADD COLUMN in place on both databases: no copy of a log that may hold millions of rows.
    op.add_column("access_log", sa.Column("rest_hash", sa.String(43)))


def downgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.drop_column("rest_hash")
