"""Security review (issue 5): the access log's data subject and action, its tamper-evident chain, checkpoints,
the purge anchor and the SIEM forwarders' positions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.add_column(sa.Column("subject", sa.String(256)))
        batch.add_column(sa.Column("action", sa.String(16)))
        batch.add_column(sa.Column("chain_pos", sa.BigInteger))
        batch.add_column(sa.Column("content_hash", sa.String(64)))
        batch.add_column(sa.Column("purged", sa.Boolean, nullable=False, server_default="0"))
        batch.create_unique_constraint("uq_access_log_chain_pos", ["chain_pos"])
    op.create_index("ix_access_log_subject_time", "access_log", ["subject", "time"])
    op.create_index(
        "ix_access_log_unsealed",
        "access_log",
        ["seq"],
        sqlite_where=sa.text("chain_pos IS NULL"),
        postgresql_where=sa.text("chain_pos IS NULL"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("number", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("chain_pos", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("number", name="pk_audit_checkpoints"),
    )
    op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("chain_pos", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_anchor"),
    )
    op.create_table(
        "audit_forwarders",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("chain_pos", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_audit_forwarders"),
    )


def downgrade() -> None:
    op.drop_table("audit_forwarders")
    op.drop_table("audit_anchor")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_access_log_unsealed", table_name="access_log")
    op.drop_index("ix_access_log_subject_time", table_name="access_log")
    with op.batch_alter_table("access_log") as batch:
        batch.drop_constraint("uq_access_log_chain_pos", type_="unique")
        for column in ("purged", "content_hash", "chain_pos", "action", "subject"):
            batch.drop_column(column)
