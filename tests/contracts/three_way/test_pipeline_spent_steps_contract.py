"""The claim's search for spent steps (due, lease free or lapsed, ``attempts >= max_attempts``: nearly never any,
and every claim asks), on SQLite by ``sqlite3`` directly, through the engine, and on PostgreSQL: a lookup by
``ix_deprovision_steps_spent`` (migration 0011) rather than a read of every due step, and on a SQLite file not yet
migrated, claims that go on without the index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.deprovision.results import budget
from gateway.settings import DeprovisionSettings
from gateway.storage.pipeline import PipelineRepository, PlannedStep, RunRecord, due_and_free, spent_steps
from gateway.storage.sqlite_pipeline import _SPENT, SPENT_LIMIT

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
BUDGET = budget(DeprovisionSettings(max_attempts=2, retry_base_seconds=1.0, retry_max_seconds=1.0))
FIRST_TWO = [
    PlannedStep("chat", StepKind.REVOKE, StepState.PENDING),
    PlannedStep("chat", StepKind.VERIFY, StepState.WAITING),
]


def _run(run_id: str) -> RunRecord:
    return RunRecord(run_id, f"agent-{run_id}", f"user-{run_id}", "cli", "cli", "left", None, RunState.RUNNING, T0,
                     None, None)  # fmt: skip


async def test_the_claims_search_for_spent_steps_is_an_index_lookup_not_a_read_of_every_due_step(
    engine: AsyncEngine, backend: str, pipeline: PipelineRepository
) -> None:
    """With 3,000 due steps (a bulk offboarding's queue) and the statistics ANALYZE leaves, the search each claim
    makes for spent steps reads them by ``ix_deprovision_steps_spent``; by the due index it read all 3,000 at every
    claim, and a 10,000-agent offboarding took time growing with the square of its size (migration 0011)."""
    if backend == "engine":
        return  # the SQLAlchemy path runs on PostgreSQL; SQLite in production takes the direct statement
    await pipeline.create_run(_run("bulk"), [])
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO deprovision_steps (run_id, channel, step, state, attempts, next_attempt_at, "
                "idempotency_key, updated_at) VALUES ('bulk', :channel, 'revoke', 'pending', 0, :t, :key, :t)"
            ),
            [{"channel": f"ch{n}", "key": f"k{n}", "t": T0 + timedelta(microseconds=n)} for n in range(3000)],
        )
        await conn.execute(text("ANALYZE"))
        if backend == "postgresql":
            free = due_and_free(T0 + timedelta(seconds=1))
            compiled = spent_steps(free, 2).compile(engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(row[0] for row in await conn.execute(text(f"EXPLAIN {compiled}")))
        else:
            moment = "2026-12-04 12:00:01.000000"
            args = ("w", moment, moment, "pending", moment, moment, 2, SPENT_LIMIT)
            plan = " ".join(str(row[-1]) for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {_SPENT}", args))
    assert "ix_deprovision_steps_spent" in plan, plan


async def test_claims_go_on_on_a_sqlite_file_not_yet_migrated_to_the_spent_steps_index(
    engine: AsyncEngine, backend: str, pipeline: PipelineRepository, caplog: pytest.LogCaptureFixture
) -> None:
    """This release started before ``channelgate migrate`` ran: the direct claim names an index the file lacks, and
    falls back to the same statement without it (slower, logged) instead of stopping the pipeline."""
    if backend != "direct":
        return  # only the direct SQLite statement names the index
    await pipeline.create_run(_run("r1"), FIRST_TWO)
    async with engine.begin() as conn:
        await conn.execute(text("DROP INDEX ix_deprovision_steps_spent"))
    claimed = await pipeline.claim("w1", T0, T0 + timedelta(seconds=60), 10, budget=BUDGET)
    assert [(s.channel, s.step) for s, _ in claimed] == [("chat", StepKind.REVOKE)]
    assert "not migrated to this release" in caplog.text
