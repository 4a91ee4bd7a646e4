"""Initial schema: agents, groups, group_members, channel_credentials, access_log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out by hand rather than from ``schema.metadata`` so this revision stays what it was when later
revisions change the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("user_name_key", sa.String(256), nullable=False),
        sa.Column("external_id", sa.String(256)),
        sa.Column("display_name", sa.String(256)),
        sa.Column("email", sa.String(320)),
        sa.Column("employee_number", sa.String(64)),
        sa.Column("manager_id", sa.String(256)),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("oidc_issuer", sa.String(512)),
        sa.Column("oidc_subject", sa.String(256)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_agents_oidc_issuer_oidc_subject"),
    )
    op.create_index(
        "uq_agents_live_user_name_key",
        "agents",
        ["user_name_key"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index("ix_agents_external_id", "agents", ["external_id"])

    op.create_table(
        "groups",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("external_id", sa.String(256)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
    )

    op.create_table(
        "group_members",
        sa.Column("group_id", sa.String(36), nullable=False),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "agent_id", name="pk_group_members"),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name="fk_group_members_group_id_groups", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_group_members_agent_id_agents", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_group_members_agent_id", "group_members", ["agent_id"])

    op.create_table(
        "channel_credentials",
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", name="pk_channel_credentials"),
    )

    op.create_table(
        "access_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64)),
        sa.Column("agent_id", sa.String(36)),
        sa.Column("agent_name", sa.String(256)),
        sa.Column("source_ip", sa.String(64)),
        sa.Column("channel", sa.String(64)),
        sa.Column("method", sa.String(16)),
        sa.Column("path", sa.Text()),
        sa.Column("status", sa.Integer()),
        sa.Column("decision", sa.String(16)),
        sa.Column("reason", sa.Text()),
        sa.Column("bytes_in", sa.BigInteger()),
        sa.Column("bytes_out", sa.BigInteger()),
        sa.Column("duration_ms", sa.Integer()),
        sa.Column("actor", sa.String(256)),
        sa.Column("detail", sa.JSON()),
        sa.Column("prev_hash", sa.String(64)),
        sa.Column("hash", sa.String(64)),
        sa.PrimaryKeyConstraint("seq", name="pk_access_log"),
    )
    op.create_index("ix_access_log_agent_time", "access_log", ["agent_id", "time"])
    op.create_index("ix_access_log_time", "access_log", ["time"])


def downgrade() -> None:
    op.drop_table("access_log")
    op.drop_table("channel_credentials")
    op.drop_table("group_members")
    op.drop_table("groups")
    op.drop_table("agents")
