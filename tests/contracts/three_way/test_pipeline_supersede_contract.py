"""The pipeline's storage contract for a run whose agent is made active again, on SQLite by ``sqlite3`` directly, on
SQLite through the engine, and on PostgreSQL: a running, held or attention run ends superseded (never done, never a
dead letter, never retried), naming what it had carried out; a done run stays done."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import Outcome, StepResult
from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.deprovision.results import Attempt, settle
from gateway.storage.access_log import AccessLogRepository, AccessQuery
from gateway.storage.database import Database
from gateway.storage.pipeline import PipelineRepository, supersede_runs
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


async def test_making_an_agent_active_again_supersedes_its_going_runs_with_receipts(
    database: Database, engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1", state=RunState.HELD), STEPS)
    [(revoke, _)] = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    async with database.begin() as conn:
        assert await supersede_runs(conn, "agent-r1", T0, actor="scim:entra", reason="enabled by SCIM") == ["r1"]
    assert set((await states_of(pipeline, "r1")).values()) == {StepState.SUPERSEDED}
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.SUPERSEDED and run.finished_at == T0
    receipts = await logged(engine, "deprovision_step")
    assert sorted(str(r["step"]) for r in receipts) == ["hand_over", "revoke", "verify"]
    assert {(r["outcome"], r["decision"]) for r in receipts} == {("superseded", "superseded")}
    [record] = await logged(engine, "deprovision")
    assert record["decision"] == "superseded" and record["run"] == "r1" and record["state"] == "superseded"
    # The worker that held the revoke's lease cannot record it any more.
    assert await record_outcome(pipeline, "w1", [(revoke, run_record("r1"))], Outcome.DONE, T0) == []


async def test_a_superseded_run_ends_superseded_not_done_and_its_record_names_the_steps_it_carried_out(
    database: Database, engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN)
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    [revoke] = [(s, r) for s, r in claimed if s.step is StepKind.REVOKE]
    await record_outcome(pipeline, "w1", [revoke], Outcome.DONE, T0)  # the chat seat is disabled; the hand-over runs on
    later = T0 + timedelta(seconds=5)
    async with database.begin() as conn:
        await supersede_runs(conn, "agent-r1", later, actor="scim:entra", reason="enabled by SCIM")
    assert await states_of(pipeline, "r1") == {
        ("chat", StepKind.REVOKE): StepState.DONE,
        ("chat", StepKind.VERIFY): StepState.SUPERSEDED,
        ("mail", StepKind.HAND_OVER): StepState.SUPERSEDED,
    }
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.SUPERSEDED and run.finished_at == later
    assert await pipeline.runs_in_state([RunState.DONE, RunState.ATTENTION]) == []
    assert [r.id for r in await pipeline.runs_in_state([RunState.SUPERSEDED])] == ["r1"]
    assert await logged(engine, "deprovision_complete") == [] and await logged(engine, "deprovision_attention") == []
    [record] = await logged(engine, "deprovision")
    assert record["carried_out"] == [{"channel": "chat", "step": "revoke"}]
    assert record["not_taken"] == [{"channel": "chat", "step": "verify"}, {"channel": "mail", "step": "hand_over"}]
    assert record["steps"] == {"chat": {"revoke": "done", "verify": "superseded"}, "mail": {"hand_over": "superseded"}}
    [entry] = await AccessLogRepository(engine).search(AccessQuery(kind="deprovision"))
    assert "for a person to undo: chat revoke" in (entry.reason or "")


async def test_a_superseded_run_with_a_dead_step_is_no_dead_letter_and_is_never_retried(
    database: Database, engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN)
    await set_states(engine, "r1", {("chat", "revoke"): "dead"})
    async with database.begin() as conn:
        await supersede_runs(conn, "agent-r1", T0, actor="ldap:corp", reason="reactivated")
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.SUPERSEDED
    assert await pipeline.runs_in_state([RunState.ATTENTION]) == []  # the dead-letter queue
    assert await pipeline.retry("r1", T0 + timedelta(seconds=1)) == 0
    assert await states_of(pipeline, "r1") == {
        ("chat", StepKind.REVOKE): StepState.DEAD,
        ("chat", StepKind.VERIFY): StepState.SUPERSEDED,
        ("mail", StepKind.HAND_OVER): StepState.SUPERSEDED,
    }
    again = await pipeline.get_run("r1")
    assert again == run
    assert await pipeline.claim("w1", T0 + timedelta(seconds=1), T0 + timedelta(seconds=60), 10, budget=BUDGET) == []


async def test_a_run_that_ended_needing_attention_is_superseded_when_its_agent_is_active_again(
    database: Database, engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    """Its failed step no longer keeps an active agent's access from ending: the run leaves the attention list
    (and its alert), its steps stay as they were, and its record names what it carried out, for a person to
    undo."""
    await pipeline.create_run(run_record("r1"), CHAIN)
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    [revoke] = [(s, r) for s, r in claimed if s.step is StepKind.REVOKE]
    [hand_over] = [(s, r) for s, r in claimed if s.step is StepKind.HAND_OVER]
    await record_outcome(pipeline, "w1", [revoke], Outcome.FAILED, T0)
    await record_outcome(pipeline, "w1", [hand_over], Outcome.DONE, T0)
    verify = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    await record_outcome(pipeline, "w1", verify, Outcome.FAILED, T0)  # the token still works: access did not end
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.ATTENTION
    steps_before = await states_of(pipeline, "r1")

    later = T0 + timedelta(minutes=5)
    async with database.begin() as conn:
        assert await supersede_runs(conn, "agent-r1", later, actor="scim:entra", reason="enabled by SCIM") == ["r1"]

    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.SUPERSEDED and run.finished_at == later
    assert await pipeline.runs_in_state([RunState.ATTENTION]) == []
    assert await states_of(pipeline, "r1") == steps_before
    assert await pipeline.retry("r1", later) == 0
    [record] = await logged(engine, "deprovision")
    assert record["decision"] == "superseded" and record["carried_out"] == [{"channel": "mail", "step": "hand_over"}]


async def test_a_run_that_ended_done_is_not_superseded_when_its_agent_is_active_again(
    database: Database, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN[:1])
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    await record_outcome(pipeline, "w1", claimed, Outcome.DONE, T0)
    async with database.begin() as conn:
        assert await supersede_runs(conn, "agent-r1", T0, actor="scim:entra", reason="enabled by SCIM") == []
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.DONE


async def test_steps_the_worker_skipped_for_an_agent_active_again_end_the_run_superseded_never_done(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await pipeline.create_run(run_record("r1"), CHAIN)
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    batch = [
        Attempt(step, run, StepResult(step.channel, step.step.value, Outcome.NOT_APPLICABLE, None, "skipped"), True)
        for step, run in claimed
    ]
    await pipeline.record(
        "w1", [a.step.id for a in batch], ["r1"], lambda snapshot: settle(batch, snapshot, T0, SETTINGS)
    )
    # The verification waiting for the revocation is not taken either: nothing of the chain acts on an active agent.
    assert set((await states_of(pipeline, "r1")).values()) == {StepState.SUPERSEDED}
    run = await pipeline.get_run("r1")
    assert run is not None and run.state is RunState.SUPERSEDED and run.finished_at == T0
    assert await logged(engine, "deprovision_complete") == []
    [record] = await logged(engine, "deprovision")
    assert (record["decision"], record["carried_out"]) == ("superseded", [])
    assert {r["outcome"] for r in await logged(engine, "deprovision_step")} == {"superseded"}
