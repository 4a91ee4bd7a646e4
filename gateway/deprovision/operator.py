"""An operator's hand on the pipeline: approving held runs and retrying dead ones, each an audited admin action
(committed with the change it records), shared by the CLI and the admin API."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.audit.writer import AuditLog
from gateway.deprovision.plan import RunState
from gateway.errors import RunSuperseded
from gateway.storage.access_log import AccessRecord
from gateway.storage.database import Database
from gateway.storage.pipeline import PipelineRepository
from gateway.timeutil import utcnow


async def approve_runs(
    database: Database, pipeline: PipelineRepository, audit: AuditLog, run_ids: Sequence[str] | None, actor: str
) -> list[str]:
    """Release the named held runs (or all held runs); returns the ids released."""
    now = utcnow()
    async with database.begin() as conn:
        approved = await pipeline.approve(run_ids, actor, now, conn=conn)
        if approved:
            await audit.write(
                AccessRecord(
                    time=now,
                    kind="deprovision_approved",
                    actor=actor,
                    decision="approved",
                    reason="irreversible deprovisioning steps released",
                    detail={"runs": approved},
                ),
                conn=conn,
            )
    return approved


async def retry_run(database: Database, pipeline: PipelineRepository, audit: AuditLog, run_id: str, actor: str) -> int:
    """Requeue a run's dead, failed and blocked steps with a fresh budget; returns how many. A superseded run is
    refused (:class:`RunSuperseded`): its agent is active again, and a new deprovisioning starts a new run."""
    now = utcnow()
    async with database.begin() as conn:
        count = await pipeline.retry(run_id, now, conn=conn)
        if not count:
            run = await pipeline.get_run(run_id, conn=conn)
            if run is not None and run.state is RunState.SUPERSEDED:
                raise RunSuperseded(
                    f"Run {run_id} was superseded: {run.user_name} was made active again before it finished, so it "
                    "is not retried. Its steps marked done were carried out (undo them by hand if needed); to end "
                    "the agent's access, deprovision the agent again, which starts a new run."
                )
        if count:
            run = await pipeline.get_run(run_id, conn=conn)
            await audit.write(
                AccessRecord(
                    time=now,
                    kind="deprovision_retried",
                    agent_id=run.agent_id if run else None,
                    agent_name=run.user_name if run else None,
                    actor=actor,
                    decision="requeued",
                    reason=f"{count} step(s) given a fresh retry budget",
                    detail={"run": run_id, "steps": count},
                ),
                conn=conn,
            )
    return count
