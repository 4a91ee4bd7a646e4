"""Directory sync over LDAP (issue 6): entries behind agents and groups, sync state, quarantined syncs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ldap_entries",
        sa.Column("directory", sa.String(32), nullable=False),
        sa.Column("entry_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("dn", sa.Text, nullable=False),
        sa.Column("disabled_by_sync", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("directory", "entry_id", name="pk_ldap_entries"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_ldap_entries_agent_id_agents", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("agent_id", name="uq_ldap_entries_agent_id"),
    )
    op.create_table(
        "ldap_groups",
        sa.Column("directory", sa.String(32), nullable=False),
        sa.Column("entry_id", sa.String(64), nullable=False),
        sa.Column("group_id", sa.String(36), nullable=False),
        sa.Column("dn", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("directory", "entry_id", name="pk_ldap_groups"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_ldap_groups_group_id_groups", ondelete="CASCADE"),
        sa.UniqueConstraint("group_id", name="uq_ldap_groups_group_id"),
    )
    op.create_table(
        "ldap_sync_state",
        sa.Column("directory", sa.String(32), nullable=False),
        sa.Column("high_water", sa.String(32)),
        sa.Column("last_full_at", sa.DateTime(timezone=True)),
        sa.Column("last_incremental_at", sa.DateTime(timezone=True)),
        sa.Column("last_result", sa.JSON),
        sa.Column("last_error", sa.Text),
        sa.Column("feed_state", sa.String(16)),
        sa.Column("feed_event_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("directory", name="pk_ldap_sync_state"),
    )
    op.create_table(
        "ldap_quarantines",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("directory", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("disabling", sa.Integer, nullable=False),
        sa.Column("active_agents", sa.Integer, nullable=False),
        sa.Column("agents", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(256)),
        sa.Column("approved_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_ldap_quarantines"),
    )
    op.create_index("ix_ldap_quarantines_directory_state", "ldap_quarantines", ["directory", "state"])


def downgrade() -> None:
    op.drop_index("ix_ldap_quarantines_directory_state", table_name="ldap_quarantines")
    op.drop_table("ldap_quarantines")
    op.drop_table("ldap_sync_state")
    op.drop_table("ldap_groups")
    op.drop_table("ldap_entries")
