"""The pipeline's reads of a run's people at each attempt (whether its agent is active again, who the successor is),
coalesced: attempts asking together share one query and each gets its own run's people; an attempt asking while a
read is in flight gets a read that started after it asked (so a re-enable committed meanwhile is seen); a failed
read fails every attempt it was for, and the next ask reads again; an attempt cancelled while waiting leaves the
others their answers."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.deprovision.people_reads import NOBODY, PeopleReads
from gateway.deprovision.plan import RunState
from gateway.errors import StorageError
from gateway.storage.pipeline import PipelineRepository, RunPeople, RunRecord
from tests.contracts.three_way.agent_rows import insert_agent

T0 = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)


class CountedReads:
    """The repository's own read, counted, and held at the gate while a test needs a read in flight."""

    def __init__(self, pipeline: PipelineRepository) -> None:
        self.pipeline = pipeline
        self.queries: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail_next = False

    async def read(self, run_ids: Collection[str]) -> dict[str, RunPeople]:
        self.queries.append(sorted(run_ids))
        self.entered.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StorageError("the database did not answer")
        return await self.pipeline.people_of(run_ids)


async def _runs(engine: AsyncEngine, pipeline: PipelineRepository, names: list[str]) -> dict[str, str]:
    """One run per agent name (all disabled, as deprovisioning leaves them); returns run id → agent id."""
    made = {}
    for n, name in enumerate(names):
        agent_id = await insert_agent(engine, T0, name, active=False)
        run_id = f"r{n}"
        record = RunRecord(run_id, agent_id, name, "cli", "cli", "left", None, RunState.RUNNING, T0, None, None)
        await pipeline.create_run(record, [])
        made[run_id] = agent_id
    return made


async def test_attempts_asking_together_share_one_query_and_each_gets_its_own_runs_agent(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    runs = await _runs(engine, pipeline, ["alice", "bob", "carol"])
    counted = CountedReads(pipeline)
    reads = PeopleReads(counted.read)
    answers = await asyncio.gather(*(reads.of(run_id) for run_id in [*runs, "r0", "gone"]))
    assert counted.queries == [["gone", "r0", "r1", "r2"]]
    assert [a.agent.id if a.agent else None for a in answers] == [*runs.values(), runs["r0"], None]
    assert answers[-1] == NOBODY


async def test_an_attempt_asking_during_a_read_gets_a_later_read_that_sees_a_re_enable_committed_meanwhile(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    runs = await _runs(engine, pipeline, ["alice", "bob"])
    counted = CountedReads(pipeline)
    reads = PeopleReads(counted.read)
    counted.gate.clear()
    first = asyncio.create_task(reads.of("r0"))
    await counted.entered.wait()
    later = asyncio.create_task(reads.of("r0"))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE agents SET active = :on WHERE id = :id"), {"on": True, "id": runs["r0"]})
    counted.gate.set()
    assert (await first).agent is not None
    seen = await later
    assert seen.agent is not None and seen.agent.active
    assert counted.queries == [["r0"], ["r0"]]


async def test_a_failed_read_fails_every_attempt_it_was_for_and_the_next_ask_reads_again(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await _runs(engine, pipeline, ["alice", "bob"])
    counted = CountedReads(pipeline)
    reads = PeopleReads(counted.read)
    counted.fail_next = True
    failed = await asyncio.gather(reads.of("r0"), reads.of("r1"), return_exceptions=True)
    assert all(isinstance(f, StorageError) for f in failed)
    again = await reads.of("r1")
    assert again.agent is not None and again.agent.user_name == "bob"
    assert counted.queries == [["r0", "r1"], ["r1"]]


async def test_an_attempt_cancelled_while_waiting_leaves_the_others_their_answers(
    engine: AsyncEngine, pipeline: PipelineRepository
) -> None:
    await _runs(engine, pipeline, ["alice"])
    counted = CountedReads(pipeline)
    reads = PeopleReads(counted.read)
    counted.gate.clear()
    cancelled = asyncio.create_task(reads.of("r0"))
    kept = asyncio.create_task(reads.of("r0"))
    await counted.entered.wait()
    cancelled.cancel()
    counted.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    answer = await kept
    assert answer.agent is not None and answer.agent.user_name == "alice"
