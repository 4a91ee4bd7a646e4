"""A deprovisioning run as the console shows it, live: each channel's steps with their state, and the receipts
(the access log's ``deprovision_step`` records of the run, and its summary) in the order they were written."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from gateway.deprovision.plan import FINISHED_RUNS, RunState, StepKind, StepState, carried_out
from gateway.deprovision.status import runs_with_steps
from gateway.errors import NotFound
from gateway.services import Services
from gateway.storage.access_log import AccessQuery, AccessRecord
from gateway.storage.pipeline import RunRecord

#: Receipts are looked for from a little before the run was created (clocks of replicas differ slightly).
_SLACK = timedelta(minutes=5)
_MAX_RECEIPTS = 2000
FINISHED = frozenset(state.value for state in FINISHED_RUNS)
#: Step states a person has to look at (the dead-letter queue shows runs with any of them).
TROUBLE = frozenset({StepState.DEAD.value, StepState.FAILED.value, StepState.BLOCKED.value})


def _receipt(record: AccessRecord) -> dict[str, Any]:
    detail = record.detail or {}
    return {
        "seq": record.seq,
        "time": record.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        "kind": record.kind,
        "channel": record.channel,
        "step": detail.get("step"),
        "attempt": detail.get("attempt"),
        "state": record.decision,
        "detail": record.reason,
        "vendor_reference": detail.get("vendor_reference"),
    }


async def receipts_of(services: Services, run: RunRecord) -> list[dict[str, Any]]:
    """The run's receipts, oldest first."""
    query = AccessQuery(agent_id=run.agent_id, since=run.created_at - _SLACK, limit=_MAX_RECEIPTS)
    records = await services.access_log.search(query)
    mine = [r for r in records if r.detail is not None and r.detail.get("run") == run.id]
    mine.reverse()
    return [_receipt(r) for r in mine]


async def run_progress(services: Services, run_id: str) -> dict[str, Any]:
    """The run, its steps and its receipts; ``finished`` tells the live view to stop polling. A superseded run
    names the steps it carried out before its agent was made active again (``carried_out``: what a person may have
    to undo) and offers no retry."""
    record = await services.pipeline.get_run(run_id[:100])
    if record is None:
        raise NotFound("No deprovisioning run has that id.")
    run = (await runs_with_steps(services.pipeline, [record]))[0]
    steps = run.pop("steps")
    assert isinstance(steps, list)
    channels = sorted({str(step["channel"]) for step in steps})
    superseded = run["state"] == RunState.SUPERSEDED.value
    return {
        "run": run,
        "channels": channels,
        "steps": steps,
        "receipts": await receipts_of(services, record),
        "finished": run["state"] in FINISHED,
        "trouble": not superseded and any(step["state"] in TROUBLE for step in steps),
        "superseded": superseded,
        "carried_out": [
            {"channel": step["channel"], "step": step["step"], "vendor_reference": step["vendor_reference"]}
            for step in steps
            if superseded and carried_out(StepKind(step["step"]), StepState(step["state"]))
        ],
    }
