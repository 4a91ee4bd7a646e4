"""Deprovisioning pipeline (issue 4): per-agent connector secrets, and the pipeline's runs and steps (outbox).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_secrets",
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "channel", "name", name="pk_agent_secrets"),
    )
    op.create_table(
        "deprovision_runs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("successor", sa.String(256)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("approved_by", sa.String(256)),
        sa.PrimaryKeyConstraint("id", name="pk_deprovision_runs"),
    )
    op.create_index("ix_deprovision_runs_agent_id", "deprovision_runs", ["agent_id", "created_at"])
    op.create_index("ix_deprovision_runs_created_at", "deprovision_runs", ["created_at"])
    op.create_table(
        "deprovision_steps",
        sa.Column("id", _SEQ, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("vendor_reference", sa.String(256)),
        sa.Column("detail", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deprovision_steps"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["deprovision_runs.id"],
            name="fk_deprovision_steps_run_id_deprovision_runs",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_deprovision_steps_idempotency_key"),
        sa.UniqueConstraint("run_id", "channel", "step", name="uq_deprovision_steps_run_id_channel_step"),
    )
    op.create_index("ix_deprovision_steps_due", "deprovision_steps", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_deprovision_steps_due", table_name="deprovision_steps")
    op.drop_table("deprovision_steps")
    op.drop_index("ix_deprovision_runs_created_at", table_name="deprovision_runs")
    op.drop_index("ix_deprovision_runs_agent_id", table_name="deprovision_runs")
    op.drop_table("deprovision_runs")
    op.drop_table("agent_secrets")
