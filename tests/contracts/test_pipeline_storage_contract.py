"""The pipeline's storage contract, on SQLite and PostgreSQL: a run and its steps commit with the trigger's
transaction or not at all; a claimed step is leased to one worker; a lapsed lease is taken over; a worker that
lost its lease cannot overwrite the new owner's result; approvals and retries requeue exactly what they name."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.storage.database import Database
from gateway.storage.pipeline import PipelineRepository, PlannedStep, RunRecord, StepFinish, idempotency_key

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _run(run_id: str, *, state: RunState = RunState.RUNNING, created: datetime = T0) -> RunRecord:
    return RunRecord(
        run_id, f"agent-{run_id}", f"user-{run_id}", "cli", "cli", "left", None, state, created, None, None
    )


STEPS = [
    PlannedStep("chat", StepKind.REVOKE, StepState.PENDING),
    PlannedStep("chat", StepKind.VERIFY, StepState.WAITING),
    PlannedStep("mail", StepKind.HAND_OVER, StepState.HELD),
]


@pytest.fixture
def pipeline(engine: AsyncEngine) -> PipelineRepository:
    return PipelineRepository(engine)


async def test_a_run_rolled_back_with_its_trigger_leaves_no_step(
    database: Database, pipeline: PipelineRepository
) -> None:
    async def trigger_that_fails_after_queueing() -> None:
        async with database.begin() as conn:
            await pipeline.create_run(_run("r1"), STEPS, conn=conn)
            raise RuntimeError("the trigger's transaction fails after queueing")

    with pytest.raises(RuntimeError):
        await trigger_that_fails_after_queueing()
    assert await pipeline.get_run("r1") is None
    assert await pipeline.steps_of(["r1"]) == []


async def test_steps_carry_a_stable_idempotency_key_per_run_channel_and_step(pipeline: PipelineRepository) -> None:
    await pipeline.create_run(_run("r1"), STEPS)
    keys = [s.idempotency_key for s in await pipeline.steps_of(["r1"])]
    assert keys == [idempotency_key("r1", s.channel, s.step) for s in STEPS]
    assert len(set(keys)) == 3


async def test_only_due_pending_steps_are_claimed_and_each_claim_counts_an_attempt(
    pipeline: PipelineRepository,
) -> None:
    await pipeline.create_run(_run("r1"), STEPS)
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10)
    assert [(s.channel, s.step, s.attempts) for s, _ in claimed] == [("chat", StepKind.REVOKE, 1)]
    assert claimed[0][1].user_name == "user-r1"
    assert await pipeline.claim("w2", T0, T0 + timedelta(seconds=60), 10) == []


async def test_a_lapsed_lease_is_taken_over_and_the_old_owner_cannot_finish(
    database: Database, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(_run("r1"), STEPS)
    [(step, _)] = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10)
    later = T0 + timedelta(seconds=61)
    [(again, _)] = await pipeline.claim("w2", later, later + timedelta(seconds=60), 10)
    assert again.id == step.id and again.attempts == 2
    finish = StepFinish(step.id, StepState.DONE, later, "ref-1", "revoked")
    async with database.begin() as conn:
        assert await pipeline.finish("w1", finish, later, conn=conn) is None
        done = await pipeline.finish("w2", finish, later, conn=conn)
    assert done is not None and done.state is StepState.DONE and done.vendor_reference == "ref-1"


async def test_concurrent_claims_never_hand_one_step_to_two_workers(pipeline: PipelineRepository) -> None:
    for n in range(20):
        await pipeline.create_run(_run(f"r{n}"), STEPS)
    lease = T0 + timedelta(seconds=60)
    results = await asyncio.gather(*(pipeline.claim(f"w{n}", T0, lease, 3) for n in range(8)))
    ids = [s.id for claimed in results for s, _ in claimed]
    assert len(ids) == len(set(ids)) == 20


async def test_approval_releases_held_steps_of_the_named_runs_only(pipeline: PipelineRepository) -> None:
    await pipeline.create_run(_run("r1", state=RunState.HELD), STEPS)
    await pipeline.create_run(_run("r2", state=RunState.HELD), STEPS)
    assert await pipeline.approve(["r1"], "admin", T0) == ["r1"]
    states = {(s.run_id, s.step): s.state for s in await pipeline.steps_of(["r1", "r2"])}
    assert states[("r1", StepKind.HAND_OVER)] is StepState.PENDING
    assert states[("r2", StepKind.HAND_OVER)] is StepState.HELD
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.RUNNING and run.approved_by == "admin"
    assert await pipeline.approve(None, "admin", T0) == ["r2"]


async def test_retry_gives_dead_steps_a_fresh_budget_and_reopens_the_run(
    database: Database, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(_run("r1"), STEPS[:1])
    [(step, _)] = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10)
    async with database.begin() as conn:
        await pipeline.finish("w1", StepFinish(step.id, StepState.DEAD, T0, None, "gave up"), T0, conn=conn)
        await pipeline.set_run_state("r1", RunState.ATTENTION, T0, conn=conn)
    assert await pipeline.retry("r1", T0) == 1
    [again] = await pipeline.steps_of(["r1"])
    assert (again.state, again.attempts) == (StepState.PENDING, 0)
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.RUNNING and run.finished_at is None


async def test_the_guard_counts_distinct_agents_deprovisioned_in_the_window(pipeline: PipelineRepository) -> None:
    await pipeline.create_run(_run("old", created=T0 - timedelta(hours=2)), [])
    await pipeline.create_run(_run("r1"), [])
    await pipeline.create_run(_run("r2"), [])
    assert await pipeline.runs_started_since(T0 - timedelta(hours=1)) == 2
