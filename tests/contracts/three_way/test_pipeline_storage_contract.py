"""The pipeline's storage contract, on SQLite by ``sqlite3`` directly, on SQLite through the engine, and on
PostgreSQL: a run and its steps commit with the trigger's transaction or not at all; a claimed step is leased to
one worker; a lapsed lease is taken over; a worker that lost its lease cannot overwrite the new owner's result;
a recorded batch writes each result with its receipt, unlocks the next step and finishes the run only when every
step is done; approvals and retries requeue exactly what they name. A run whose agent is made active again:
test_pipeline_supersede_contract.py."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import Outcome, StepResult
from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.deprovision.results import Attempt, settle
from gateway.storage.access_log import AccessLogRepository
from gateway.storage.database import Database
from gateway.storage.pipeline import (
    PipelineRepository,
    PlannedStep,
    RunRecord,
    StepFinish,
    idempotency_key,
)
from tests.contracts.three_way.agent_rows import insert_agent
from tests.contracts.three_way.pipeline_contract import (
    BUDGET,
    CHAIN,
    SETTINGS,
    STEPS,
    T0,
    logged,
    record_outcome,
    run_record,
    set_states,
    states_of,
)


async def test_a_run_rolled_back_with_its_trigger_leaves_no_step(
    database: Database, pipeline: PipelineRepository
) -> None:
    async def trigger_that_fails_after_queueing() -> None:
        async with database.begin() as conn:
            await pipeline.create_run(run_record("r1"), STEPS, conn=conn)
            raise RuntimeError("the trigger's transaction fails after queueing")

    with pytest.raises(RuntimeError):
        await trigger_that_fails_after_queueing()
    assert await pipeline.get_run("r1") is None
    assert await pipeline.steps_of(["r1"]) == []


async def test_steps_carry_a_stable_idempotency_key_per_run_channel_and_step(pipeline: PipelineRepository) -> None:
    await pipeline.create_run(run_record("r1"), STEPS)
    keys = [s.idempotency_key for s in await pipeline.steps_of(["r1"])]
    assert keys == [idempotency_key("r1", s.channel, s.step) for s in STEPS]
    assert len(set(keys)) == 3


async def test_only_due_pending_steps_are_claimed_and_each_claim_counts_an_attempt(
    pipeline: PipelineRepository,
) -> None:
    await pipeline.create_run(run_record("r1"), STEPS)
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    assert [(s.channel, s.step, s.attempts) for s, _ in claimed] == [("chat", StepKind.REVOKE, 1)]
    assert claimed[0][1].user_name == "user-r1"
    assert await pipeline.claim("w2", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET) == []


async def test_a_lapsed_lease_is_taken_over_and_the_old_owner_cannot_finish(
    database: Database, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), STEPS)
    [(step, _)] = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    later = T0 + timedelta(seconds=61)
    [(again, _)] = await pipeline.claim("w2", later, later + timedelta(seconds=60), 10, budget=BUDGET)
    assert again.id == step.id and again.attempts == 2
    finish = StepFinish(step.id, StepState.DONE, later, "ref-1", "revoked")
    async with database.begin() as conn:
        assert await pipeline.finish("w1", finish, later, conn=conn) is None
        done = await pipeline.finish("w2", finish, later, conn=conn)
    assert done is not None and done.state is StepState.DONE and done.vendor_reference == "ref-1"


async def test_concurrent_claims_never_hand_one_step_to_two_workers(pipeline: PipelineRepository) -> None:
    for n in range(20):
        await pipeline.create_run(run_record(f"r{n}"), STEPS)
    lease = T0 + timedelta(seconds=60)
    results = await asyncio.gather(*(pipeline.claim(f"w{n}", T0, lease, 3, budget=BUDGET) for n in range(8)))
    ids = [s.id for claimed in results for s, _ in claimed]
    assert len(ids) == len(set(ids)) == 20


async def test_approval_releases_held_steps_of_the_named_runs_only(pipeline: PipelineRepository) -> None:
    await pipeline.create_run(run_record("r1", state=RunState.HELD), STEPS)
    await pipeline.create_run(run_record("r2", state=RunState.HELD), STEPS)
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
    await pipeline.create_run(run_record("r1"), STEPS[:1])
    [(step, _)] = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    async with database.begin() as conn:
        await pipeline.finish("w1", StepFinish(step.id, StepState.DEAD, T0, None, "gave up"), T0, conn=conn)
        await pipeline.set_run_state("r1", RunState.ATTENTION, T0, conn=conn)
    assert await pipeline.retry("r1", T0) == 1
    [again] = await pipeline.steps_of(["r1"])
    assert (again.state, again.attempts) == (StepState.PENDING, 0)
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.RUNNING and run.finished_at is None


async def test_the_guard_counts_distinct_agents_deprovisioned_in_the_window(pipeline: PipelineRepository) -> None:
    await pipeline.create_run(run_record("old", created=T0 - timedelta(hours=2)), [])
    await pipeline.create_run(run_record("r1"), [])
    await pipeline.create_run(run_record("r2"), [])
    assert await pipeline.runs_started_since(T0 - timedelta(hours=1)) == 2


async def test_a_recorded_batch_writes_each_result_with_its_receipt_and_unlocks_the_next_step(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN)
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    assert len(claimed) == 2
    settled = await record_outcome(pipeline, "w1", claimed, Outcome.DONE, T0)
    assert sorted(state for _, state in settled) == [StepState.DONE, StepState.DONE]
    assert await states_of(pipeline, "r1") == {
        ("chat", StepKind.REVOKE): StepState.DONE,
        ("chat", StepKind.VERIFY): StepState.PENDING,
        ("mail", StepKind.HAND_OVER): StepState.DONE,
    }
    receipts = await logged(engine, "deprovision_step")
    assert sorted((r["channel"], r["step"], r["decision"], r["attempt"]) for r in receipts) == [
        ("chat", "revoke", "done", 1),
        ("mail", "hand_over", "done", 1),
    ]
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.RUNNING and run.finished_at is None
    [(verify, _)] = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    assert verify.step is StepKind.VERIFY


async def test_a_consoles_reference_and_detail_are_fitted_so_its_result_is_recorded_on_every_database(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    """A console chooses its ticket reference and its error text: a NUL (which no PostgreSQL text holds) and a
    reference longer than its column made the result's write fail at every retry, and the step never ended."""
    await pipeline.create_run(run_record("r1"), CHAIN[:1])
    [(revoke, run)] = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    result = StepResult("chat", "revoke", Outcome.FAILED, "T-" + "9" * 400, "HTTP 400: bad\x00request " + "x" * 3000)
    batch = [Attempt(revoke, run, result)]
    await pipeline.record("w1", [revoke.id], ["r1"], lambda snapshot: settle(batch, snapshot, T0, SETTINGS))
    [step] = await pipeline.steps_of(["r1"])
    assert step.state is StepState.FAILED
    assert step.vendor_reference is not None and len(step.vendor_reference) == 256
    assert step.vendor_reference.startswith("T-999") and step.vendor_reference.endswith("…")
    assert step.detail is not None and step.detail.startswith("HTTP 400: bad\ufffdrequest xxx")
    assert len(step.detail) == 2000
    [receipt] = await logged(engine, "deprovision_step")
    assert receipt["vendor_reference"] == result.vendor_reference  # the receipt's JSON holds it whole
    [record] = [r for r in await AccessLogRepository(engine).tail(10) if r.kind == "deprovision_step"]
    assert record.reason is not None and record.reason.startswith("HTTP 400: bad\ufffdrequest")
    assert receipt["fitted"] == ["reason"]  # on every path, the direct SQLite writer's too (it once dropped this)


async def test_a_run_is_done_only_when_every_step_is_and_its_summary_is_written_once(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN)
    later = T0 + timedelta(seconds=1)
    await record_outcome(
        pipeline, "w1", await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET), Outcome.DONE, T0
    )
    assert await logged(engine, "deprovision_complete") == []
    await record_outcome(
        pipeline,
        "w1",
        await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET),
        Outcome.DONE,
        later,
    )
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.DONE and run.finished_at == later
    [summary] = await logged(engine, "deprovision_complete")
    assert summary["steps"] == {"chat": {"revoke": "done", "verify": "done"}, "mail": {"hand_over": "done"}}


async def test_a_retry_is_due_after_its_backoff_and_a_spent_budget_is_dead_never_done(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN[:2])
    await record_outcome(
        pipeline, "w1", await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET), Outcome.RETRY, T0
    )
    [revoke, _] = await pipeline.steps_of(["r1"])
    assert revoke.state is StepState.PENDING and revoke.next_attempt_at == T0 + timedelta(seconds=1)
    assert await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET) == []
    again = T0 + timedelta(seconds=1)
    claimed = await pipeline.claim("w1", again, again + timedelta(seconds=60), 10, budget=BUDGET)
    assert await record_outcome(pipeline, "w1", claimed, Outcome.RETRY, again) == [(revoke.id, StepState.DEAD)]
    states = await states_of(pipeline, "r1")
    assert states[("chat", StepKind.REVOKE)] is StepState.DEAD
    assert states[("chat", StepKind.VERIFY)] is StepState.PENDING  # a dead revocation is exactly when to look
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.RUNNING
    assert [r["decision"] for r in await logged(engine, "deprovision_step")] == ["pending", "dead"]


async def test_a_result_whose_lease_was_taken_over_is_not_recorded_and_leaves_no_receipt(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN[:1])
    first = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    later = T0 + timedelta(seconds=61)
    second = await pipeline.claim("w2", later, later + timedelta(seconds=60), 10, budget=BUDGET)
    assert await record_outcome(pipeline, "w1", first, Outcome.FAILED, later) == []
    assert await logged(engine, "deprovision_step") == []
    assert await record_outcome(pipeline, "w2", second, Outcome.DONE, later) == [(second[0][0].id, StepState.DONE)]
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.DONE


async def test_two_workers_recording_the_last_steps_of_one_run_at_once_finish_it(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    steps = [PlannedStep(c, StepKind.REVOKE, StepState.PENDING) for c in ("chat", "mail", "phone", "sms")]
    for n in range(10):
        await pipeline.create_run(run_record(f"r{n}"), steps)
    lease = T0 + timedelta(seconds=60)
    claims = [await pipeline.claim(f"w{n}", T0, lease, 10, budget=BUDGET) for n in range(4)]
    assert sum(len(c) for c in claims) == 40
    await asyncio.gather(*(record_outcome(pipeline, f"w{n}", claims[n], Outcome.DONE, T0) for n in range(4)))
    for n in range(10):
        run = await pipeline.get_run(f"r{n}")
        assert run is not None and run.state is RunState.DONE
    assert len(await logged(engine, "deprovision_complete")) == 10


async def test_the_people_of_a_run_are_its_agent_its_live_manager_and_the_live_successor_it_names(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    lead = await insert_agent(engine, T0, "Lead")
    gone = await insert_agent(engine, T0, "gone", deleted=True)
    alice = await insert_agent(engine, T0, "alice", manager=lead)
    bob = await insert_agent(engine, T0, "bob", manager=gone)
    await insert_agent(engine, T0, "Dave", active=False)
    runs = {
        "r1": RunRecord("r1", alice, "alice", "cli", "cli", "left", None, RunState.RUNNING, T0, None, None),
        "r2": RunRecord("r2", bob, "bob", "cli", "cli", "left", "lead", RunState.RUNNING, T0, None, None),
        "r3": RunRecord("r3", bob, "bob", "cli", "cli", "left", "DAVE", RunState.RUNNING, T0, None, None),
        "r4": RunRecord("r4", "nobody", "carol", "cli", "cli", "left", "nobody", RunState.RUNNING, T0, None, None),
    }
    for run in runs.values():
        await pipeline.create_run(run, [])
    people = await pipeline.people_of(list(runs))
    assert people["r1"].agent is not None and people["r1"].agent.user_name == "alice"
    assert people["r1"].manager is not None and people["r1"].manager.id == lead
    assert people["r1"].named_successor is None
    assert people["r2"].manager is None  # a deleted manager is no manager
    assert people["r2"].named_successor is not None and people["r2"].named_successor.id == lead
    assert people["r3"].named_successor is not None and not people["r3"].named_successor.active
    assert people["r4"].agent is None and people["r4"].named_successor is None


async def test_the_direct_and_the_engine_path_write_the_same_rows(engine: AsyncEngine, backend: str) -> None:
    if backend == "postgresql":
        return  # one path on PostgreSQL; the comparison is SQLite's
    database = engine.url.database
    assert database is not None
    for direct, run_id in ((True, "direct"), (False, "engine")):
        pipeline = PipelineRepository(engine, direct=direct)
        await pipeline.create_run(run_record(run_id), CHAIN)
        claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
        await record_outcome(pipeline, "w1", claimed, Outcome.DONE, T0)
        claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
        await record_outcome(pipeline, "w1", claimed, Outcome.RETRY, T0)
    with sqlite3.connect(database) as db:
        steps = {
            run_id: db.execute(
                "SELECT channel, step, state, attempts, next_attempt_at, lease_owner, lease_until, vendor_reference, "
                "detail, updated_at, typeof(next_attempt_at) FROM deprovision_steps WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
            for run_id in ("direct", "engine")
        }
        log = {
            run_id: db.execute(
                "SELECT time, kind, channel, decision, reason, actor, replace(detail, ?, 'RUN'), typeof(detail), "
                "prev_hash, hash FROM access_log WHERE json_extract(detail, '$.run') = ? ORDER BY seq",
                (run_id, run_id),
            ).fetchall()
            for run_id in ("direct", "engine")
        }
    assert steps["direct"] == steps["engine"]
    assert len(log["direct"]) == 3
    assert log["direct"] == log["engine"]


async def test_a_step_that_crashes_its_worker_every_time_is_dead_lettered_by_the_claim_past_its_budget(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN[:2])
    lease = timedelta(seconds=60)
    now, seen = T0, []
    for crash in range(3):  # each worker claims what is due and dies before recording it; the lease lapses
        seen += [s.attempts for s, _ in await pipeline.claim(f"w{crash}", now, now + lease, 10, budget=BUDGET)]
        now += lease + timedelta(seconds=1)
    assert seen == [1, 2, 1]  # the revoke twice (its budget), then the verification its death unlocked
    states = await states_of(pipeline, "r1")
    assert states[("chat", StepKind.REVOKE)] is StepState.DEAD
    [dead] = [r for r in await logged(engine, "deprovision_step") if r["step"] == "revoke"]
    assert (dead["decision"], dead["attempt"]) == ("dead", 2)
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.RUNNING


async def test_retrying_a_held_run_keeps_it_held_and_its_irreversible_steps_wait_for_approval(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    steps = [*STEPS, PlannedStep("chat", StepKind.REMOVE, StepState.WAITING)]
    await pipeline.create_run(run_record("r1", state=RunState.HELD), steps)
    await set_states(
        engine, "r1", {("chat", "revoke"): "dead", ("chat", "verify"): "failed", ("chat", "remove"): "blocked"}
    )
    assert await pipeline.retry("r1", T0) == 1
    states = await states_of(pipeline, "r1")
    assert states[("chat", StepKind.REVOKE)] is StepState.PENDING
    assert states[("mail", StepKind.HAND_OVER)] is StepState.HELD
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.HELD and run.approved_by is None


async def test_a_retried_revocation_has_its_verification_redone_so_no_step_waits_for_ever(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    steps = [*CHAIN[:2], PlannedStep("chat", StepKind.REMOVE, StepState.WAITING)]
    await pipeline.create_run(run_record("r1", state=RunState.ATTENTION), steps)
    await set_states(
        engine, "r1", {("chat", "revoke"): "dead", ("chat", "verify"): "done", ("chat", "remove"): "failed"}
    )
    assert await pipeline.retry("r1", T0) == 1
    assert await states_of(pipeline, "r1") == {
        ("chat", StepKind.REVOKE): StepState.PENDING,
        ("chat", StepKind.VERIFY): StepState.WAITING,
        ("chat", StepKind.REMOVE): StepState.WAITING,
    }
    for _ in range(3):
        claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
        await record_outcome(pipeline, "w1", claimed, Outcome.DONE, T0)
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.DONE
