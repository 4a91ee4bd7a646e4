"""Superseded deprovisioning runs get a state of their own (gateway/deprovision/plan.py ``RunState.SUPERSEDED``).

Runs superseded before this release (their agent made active again while they were going) were stored as ``done``
(or ``attention``), their untaken steps as ``not_applicable`` with a fixed detail: the supersede's
("superseded: the agent was made active again by ...") or the worker's skip ("skipped: NAME is active again; this
run's disable no longer holds"). Those steps become ``superseded`` and their runs too, so no such run is reported
done any more. The column is ``String(16)`` without a constraint: no schema change. Not online: a previous release
cannot read a ``superseded`` run (its agent's status and the console's pages of it answer 500 until it is updated).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUPERSEDED = "superseded: the agent was made active again by %"
_SKIPPED = "skipped: % is active again; this run's disable no longer holds"


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE deprovision_steps SET state = 'superseded' WHERE state = 'not_applicable' "
            "AND (detail LIKE :superseded OR detail LIKE :skipped)"
        ).bindparams(superseded=_SUPERSEDED, skipped=_SKIPPED)
    )
    op.execute(
        "UPDATE deprovision_runs SET state = 'superseded' WHERE state IN ('done', 'attention') "
        "AND id IN (SELECT run_id FROM deprovision_steps WHERE state = 'superseded')"
    )


def downgrade() -> None:
    # What the previous release computed for these runs: attention when a step failed, went dead or was blocked.
    op.execute(
        "UPDATE deprovision_runs SET state = CASE WHEN EXISTS (SELECT 1 FROM deprovision_steps s "
        "WHERE s.run_id = deprovision_runs.id AND s.state IN ('failed', 'dead', 'blocked')) "
        "THEN 'attention' ELSE 'done' END WHERE state = 'superseded'"
    )
    op.execute("UPDATE deprovision_steps SET state = 'not_applicable' WHERE state = 'superseded'")
