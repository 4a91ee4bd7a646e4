"""What the pipeline's storage contracts share: a run and its steps, a recorded batch, the states and receipts read
back, on each path the ``backend`` fixture names (SQLite by ``sqlite3`` directly, SQLite through the engine,
PostgreSQL); the ``pipeline`` fixture is in conftest.py."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import Outcome, StepResult
from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.deprovision.results import Attempt, budget, settle
from gateway.settings import DeprovisionSettings
from gateway.storage.access_log import AccessLogRepository
from gateway.storage.pipeline import PipelineRepository, PlannedStep, RunRecord, StepRecord

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SETTINGS = DeprovisionSettings(max_attempts=2, retry_base_seconds=1.0, retry_max_seconds=1.0)
BUDGET = budget(SETTINGS)


def run_record(run_id: str, *, state: RunState = RunState.RUNNING, created: datetime = T0) -> RunRecord:
    return RunRecord(
        run_id, f"agent-{run_id}", f"user-{run_id}", "cli", "cli", "left", None, state, created, None, None
    )


STEPS = [
    PlannedStep("chat", StepKind.REVOKE, StepState.PENDING),
    PlannedStep("chat", StepKind.VERIFY, StepState.WAITING),
    PlannedStep("mail", StepKind.HAND_OVER, StepState.HELD),
]


CHAIN = [
    PlannedStep("chat", StepKind.REVOKE, StepState.PENDING),
    PlannedStep("chat", StepKind.VERIFY, StepState.WAITING),
    PlannedStep("mail", StepKind.HAND_OVER, StepState.PENDING),
]


async def record_outcome(
    pipeline: PipelineRepository,
    owner: str,
    claimed: list[tuple[StepRecord, RunRecord]],
    outcome: Outcome,
    at: datetime,
) -> list[tuple[int, StepState]]:
    batch = [
        Attempt(step, run, StepResult(step.channel, step.step.value, outcome, "ref", "said")) for step, run in claimed
    ]
    changes = await pipeline.record(
        owner,
        [a.step.id for a in batch],
        [a.run.id for a in batch],
        lambda snapshot: settle(batch, snapshot, at, SETTINGS, uniform=lambda low, high: high),
    )
    return list(changes.settled)


async def states_of(pipeline: PipelineRepository, run_id: str) -> Mapping[tuple[str, StepKind], StepState]:
    return {(s.channel, s.step): s.state for s in await pipeline.steps_of([run_id])}


async def logged(engine: AsyncEngine, kind: str) -> list[dict[str, object]]:
    records = await AccessLogRepository(engine).tail(1000)
    return [{"channel": r.channel, "decision": r.decision, **(r.detail or {})} for r in records if r.kind == kind]


async def set_states(engine: AsyncEngine, run_id: str, states: Mapping[tuple[str, str], str]) -> None:
    async with engine.begin() as conn:
        for (channel, step), state in states.items():
            await conn.execute(
                text("UPDATE deprovision_steps SET state = :state WHERE run_id = :run AND channel = :ch AND step = :s"),
                {"state": state, "run": run_id, "ch": channel, "s": step},
            )
