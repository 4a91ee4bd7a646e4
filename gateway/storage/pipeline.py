"""The deprovisioning pipeline's state: runs and their steps (tables ``deprovision_runs``, ``deprovision_steps``).

A run and its planned steps are inserted in the trigger's own transaction (with the agent's ``active = false``
and its access-log record), so the queued work exists exactly when the state change does: a transactional
outbox. Workers *claim* due steps with a lease (``lease_owner``/``lease_until``, taken over when it lapses, so a
crashed replica's steps are not lost) and *finish* them fenced by that lease: a worker whose lease was taken
over cannot overwrite the newer owner's result.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.deprovision.plan import FINISHED_RUNS, RunState, StepKind, StepState, requeue, run_state
from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.limits import NUL
from gateway.storage.pipeline_batches import Decide, read_people, record_batch, supersede_runs
from gateway.storage.pipeline_records import (
    Budget,
    Changes,
    PlannedStep,
    RunPeople,
    RunRecord,
    Snapshot,
    StepFinish,
    StepRecord,
    idempotency_key,
    run_from_row,
    step_from_row,
)
from gateway.storage.schema import access_log, deprovision_runs, deprovision_steps
from gateway.storage.sqlite_outbox import SqliteOutbox
from gateway.storage.sqlite_pipeline import SqlitePipeline
from gateway.storage.sqlite_writer import sqlite_access

__all__ = [
    "Budget",
    "Changes",
    "PipelineRepository",
    "PlannedStep",
    "RunPeople",
    "RunRecord",
    "Snapshot",
    "StepFinish",
    "StepRecord",
    "idempotency_key",
    "supersede_runs",
]


#: Spent steps dead-lettered by one claim at most (the rest by the next).
COMMIT_LIMIT = 200


class PipelineRepository:
    """Runs and steps through the engine; on a SQLite file, the worker's claims, results and reads go through
    ``sqlite3`` directly (``gateway.storage.sqlite_pipeline``), unless ``direct=False``. Both ways meet the same
    contract (tests/contracts/three_way/test_pipeline_storage_contract.py)."""

    def __init__(self, engine: AsyncEngine, *, direct: bool = True) -> None:
        self._engine = engine
        access = sqlite_access(engine) if direct else None
        self.direct = SqlitePipeline(access) if access is not None else None
        #: The trigger's transaction by ``sqlite3`` (``gateway/deprovision/kill.py``); None where ``direct`` is.
        self.outbox = SqliteOutbox(access) if access is not None else None

    async def create_run(
        self, run: RunRecord, steps: Sequence[PlannedStep], *, conn: AsyncConnection | None = None
    ) -> None:
        """Insert a run and its planned steps (in the trigger's transaction when ``conn`` is given)."""
        async with write_transaction(self._engine, conn) as c:
            await c.execute(
                insert(deprovision_runs).values(
                    id=run.id,
                    agent_id=run.agent_id,
                    user_name=run.user_name,
                    source=run.source,
                    actor=run.actor,
                    reason=run.reason,
                    successor=run.successor,
                    state=run.state.value,
                    created_at=to_db(run.created_at),
                    # A run with nothing to do is queued done, and so finished when it was queued.
                    finished_at=to_db(run.finished_at) if run.finished_at is not None else None,
                    approved_by=None,
                )
            )
            if steps:
                now = to_db(run.created_at)
                await c.execute(
                    insert(deprovision_steps),
                    [
                        {
                            "run_id": run.id,
                            "channel": s.channel,
                            "step": s.step.value,
                            "state": s.state.value,
                            "attempts": 0,
                            "next_attempt_at": now,
                            "idempotency_key": idempotency_key(run.id, s.channel, s.step),
                            "updated_at": now,
                        }
                        for s in steps
                    ],
                )

    async def runs_started_since(self, since: datetime, *, conn: AsyncConnection | None = None) -> int:
        """Distinct agents whose deprovisioning started at or after ``since`` (the mass-deletion guard's count)."""
        query = select(func.count(func.distinct(deprovision_runs.c.agent_id))).where(
            deprovision_runs.c.created_at >= to_db(since)
        )
        async with read_transaction(self._engine, conn) as c:
            return int((await c.execute(query)).scalar_one())

    async def claim(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        *,
        budget: Budget,
        conn: AsyncConnection | None = None,
    ) -> list[tuple[StepRecord, RunRecord]]:
        """Take up to ``limit`` due steps whose lease is free or lapsed; each claim counts as an attempt. A due step
        whose claims spent its ``budget`` (a step that crashes its worker every time never has a result recorded)
        is not handed out again: it is dead-lettered in this same transaction (``Budget.bury``)."""
        if conn is None and self.direct is not None:
            return await self.direct.claim(owner, now, lease_until, limit, budget)
        steps = deprovision_steps.c
        free = due_and_free(now)
        async with write_transaction(self._engine, conn) as c:
            await bury_spent(c, owner, now, free, budget)
            free.append(steps.attempts < budget.max_attempts)
            due = (
                select(steps.id)
                .where(*free)
                .order_by(steps.next_attempt_at, steps.id)
                .limit(limit)
                # PostgreSQL: replicas claiming at once skip each other's rows instead of queueing on them.
                .with_for_update(skip_locked=True)
            )
            ids = list((await c.execute(due)).scalars())
            if not ids:
                return []
            claimed = await c.execute(
                update(deprovision_steps)
                .where(steps.id.in_(ids))
                .values(
                    lease_owner=owner,
                    lease_until=to_db(lease_until),
                    attempts=steps.attempts + 1,
                    updated_at=to_db(now),
                )
                .returning(*deprovision_steps.c)
            )
            records = [step_from_row(row) for row in claimed.mappings()]
            runs = await _runs(c, {s.run_id for s in records})
        return [(s, runs[s.run_id]) for s in sorted(records, key=lambda s: s.id)]

    async def finish(
        self, owner: str, finish: StepFinish, now: datetime, *, conn: AsyncConnection
    ) -> StepRecord | None:
        """Record an attempt's result if ``owner`` still holds the step's lease; None when it lost it."""
        result = await conn.execute(
            update(deprovision_steps)
            .where(
                deprovision_steps.c.id == finish.step_id,
                deprovision_steps.c.lease_owner == owner,
                deprovision_steps.c.state == StepState.PENDING.value,
            )
            .values(
                state=finish.state.value,
                next_attempt_at=to_db(finish.next_attempt_at),
                lease_owner=None,
                lease_until=None,
                vendor_reference=finish.vendor_reference,
                detail=finish.detail,
                updated_at=to_db(now),
            )
            .returning(*deprovision_steps.c)
        )
        row = result.mappings().first()
        return None if row is None else step_from_row(row)

    async def record(self, owner: str, step_ids: Collection[int], run_ids: Collection[str], decide: Decide) -> Changes:
        """Record a batch of attempts in one transaction: read the batch's runs and all their steps (locked, so
        no other replica records a step of these runs meanwhile), let ``decide`` say what changes, write it.
        A step's result is written only while ``owner`` holds its lease (fencing), so a worker whose lease was
        taken over cannot overwrite the new owner's result."""
        if self.direct is not None:
            return await self.direct.record(owner, step_ids, run_ids, decide)
        async with write_transaction(self._engine) as c:
            return await record_batch(c, owner, step_ids, run_ids, decide)

    async def people_of(self, run_ids: Collection[str]) -> dict[str, RunPeople]:
        """Each run's agent (deleted or not), that agent's live manager, and the live agent the trigger named as
        successor (userName compared case-insensitively, as ``AgentRepository.find_by_user_name``)."""
        if self.direct is not None:
            return await self.direct.people_of(run_ids)
        async with read_transaction(self._engine) as c:
            return await read_people(c, run_ids)

    async def set_step_states(
        self, run_id: str, channel: str, states: Mapping[StepKind, StepState], now: datetime, *, conn: AsyncConnection
    ) -> None:
        for kind, state in states.items():
            await conn.execute(
                update(deprovision_steps)
                .where(
                    deprovision_steps.c.run_id == run_id,
                    deprovision_steps.c.channel == channel,
                    deprovision_steps.c.step == kind.value,
                )
                .values(state=state.value, next_attempt_at=to_db(now), updated_at=to_db(now))
            )

    async def set_run_state(
        self, run_id: str, state: RunState, now: datetime, *, conn: AsyncConnection
    ) -> RunRecord | None:
        """Move the run to ``state`` (``finished_at`` set when it leaves running/held); None if unchanged."""
        finished = state in FINISHED_RUNS
        result = await conn.execute(
            update(deprovision_runs)
            .where(deprovision_runs.c.id == run_id, deprovision_runs.c.state != state.value)
            .values(state=state.value, finished_at=to_db(now) if finished else None)
            .returning(*deprovision_runs.c)
        )
        row = result.mappings().first()
        return None if row is None else run_from_row(row)

    async def get_run(self, run_id: str, *, conn: AsyncConnection | None = None) -> RunRecord | None:
        if NUL in run_id:  # from a request: no run has it (PostgreSQL would refuse the query, not find nothing)
            return None
        async with read_transaction(self._engine, conn) as c:
            row = (await c.execute(select(deprovision_runs).where(deprovision_runs.c.id == run_id))).mappings().first()
        return None if row is None else run_from_row(row)

    async def steps_of(self, run_ids: Iterable[str], *, conn: AsyncConnection | None = None) -> list[StepRecord]:
        ids = list(run_ids)
        query = (
            select(deprovision_steps)
            .where(deprovision_steps.c.run_id.in_(ids))
            .order_by(deprovision_steps.c.run_id, deprovision_steps.c.id)
        )
        async with read_transaction(self._engine, conn) as c:
            return [step_from_row(row) for row in (await c.execute(query)).mappings()]

    async def runs_of_agent(self, agent_id: str, *, conn: AsyncConnection | None = None) -> list[RunRecord]:
        """The agent's deprovisioning runs, newest first."""
        query = (
            select(deprovision_runs)
            .where(deprovision_runs.c.agent_id == agent_id)
            .order_by(deprovision_runs.c.created_at.desc(), deprovision_runs.c.id)
        )
        async with read_transaction(self._engine, conn) as c:
            return [run_from_row(row) for row in (await c.execute(query)).mappings()]

    async def runs_in_state(
        self, states: Iterable[RunState], limit: int = 1000, *, conn: AsyncConnection | None = None
    ) -> list[RunRecord]:
        query = (
            select(deprovision_runs)
            .where(deprovision_runs.c.state.in_([s.value for s in states]))
            .order_by(deprovision_runs.c.created_at, deprovision_runs.c.id)
            .limit(limit)
        )
        async with read_transaction(self._engine, conn) as c:
            return [run_from_row(row) for row in (await c.execute(query)).mappings()]

    async def approve(
        self, run_ids: Sequence[str] | None, actor: str, now: datetime, *, conn: AsyncConnection | None = None
    ) -> list[str]:
        """Release held runs (all of them when ``run_ids`` is None): their held steps become due."""
        if run_ids is not None:
            run_ids = [run_id for run_id in run_ids if NUL not in run_id]
        async with write_transaction(self._engine, conn) as c:
            query = select(deprovision_runs.c.id).where(deprovision_runs.c.state == RunState.HELD.value)
            if run_ids is not None:
                query = query.where(deprovision_runs.c.id.in_(list(run_ids)))
            ids = list((await c.execute(query)).scalars())
            if not ids:
                return []
            await c.execute(
                update(deprovision_runs)
                .where(deprovision_runs.c.id.in_(ids))
                .values(state=RunState.RUNNING.value, approved_by=actor)
            )
            await c.execute(
                update(deprovision_steps)
                .where(deprovision_steps.c.run_id.in_(ids), deprovision_steps.c.state == StepState.HELD.value)
                .values(state=StepState.PENDING.value, next_attempt_at=to_db(now), updated_at=to_db(now))
            )
        return ids

    async def retry(self, run_id: str, now: datetime, *, conn: AsyncConnection | None = None) -> int:
        """Give a run's dead, failed and blocked steps a fresh budget (after a person fixed the cause), in chain
        order per channel (``gateway.deprovision.plan.requeue``); returns how many steps are due or held again.

        A retry is not an approval: a run the mass-deletion guard held and nobody approved stays held, and its
        irreversible steps wait for ``approve``. That includes a held run that finished in attention (its removal
        blocked, no hand-over left to hold), known by its ``deprovision_held`` record.

        A superseded run is never retried (0): its agent was made active again, and its steps would act against
        an active agent. Deprovisioning the agent again starts a new run."""
        if NUL in run_id:
            return 0
        async with write_transaction(self._engine, conn) as c:
            # The run's row first, as a worker recording results locks it (no lock-order deadlock on PostgreSQL).
            row = (
                (await c.execute(select(deprovision_runs).where(deprovision_runs.c.id == run_id).with_for_update()))
                .mappings()
                .first()
            )
            if row is None:
                return 0
            run = run_from_row(row)
            if run.state is RunState.SUPERSEDED:
                return 0
            held = run.state is RunState.HELD or (run.approved_by is None and await _was_held(c, run))
            steps = await self.steps_of([run_id], conn=c)
            states = {s.id: s.state for s in steps}
            due = 0
            for channel in sorted({s.channel for s in steps}):
                mine = {s.step: s for s in steps if s.channel == channel}
                moves = requeue({kind: s.state for kind, s in mine.items()}, held=held)
                for kind, state in moves.items():
                    states[mine[kind].id] = state
                    await c.execute(
                        update(deprovision_steps)
                        .where(deprovision_steps.c.id == mine[kind].id)
                        .values(
                            state=state.value,
                            attempts=0,
                            next_attempt_at=to_db(now),
                            lease_owner=None,
                            lease_until=None,
                            updated_at=to_db(now),
                        )
                    )
                    due += state is not StepState.WAITING
            if due:
                await c.execute(
                    update(deprovision_runs)
                    .where(deprovision_runs.c.id == run_id)
                    .values(state=run_state(states.values(), held=held).value, finished_at=None)
                )
        return due

    async def count_steps(self, *, conn: AsyncConnection | None = None) -> dict[StepState, int]:
        query = select(deprovision_steps.c.state, func.count()).group_by(deprovision_steps.c.state)
        async with read_transaction(self._engine, conn) as c:
            return {StepState(state): int(n) for state, n in (await c.execute(query)).all()}

    async def count_runs(self, *, conn: AsyncConnection | None = None) -> dict[RunState, int]:
        query = select(deprovision_runs.c.state, func.count()).group_by(deprovision_runs.c.state)
        async with read_transaction(self._engine, conn) as c:
            return {RunState(state): int(n) for state, n in (await c.execute(query)).all()}

    async def next_due(self, *, conn: AsyncConnection | None = None) -> datetime | None:
        """When the earliest pending step is due (for a worker deciding how long to sleep)."""
        query = select(func.min(deprovision_steps.c.next_attempt_at)).where(
            and_(deprovision_steps.c.state == StepState.PENDING.value)
        )
        async with read_transaction(self._engine, conn) as c:
            value = (await c.execute(query)).scalar_one_or_none()
        return None if value is None else from_db(value)


async def _was_held(c: AsyncConnection, run: RunRecord) -> bool:
    """Whether the guard held ``run`` when it was queued (its ``deprovision_held`` record, written with it)."""
    query = select(access_log.c.detail).where(
        access_log.c.kind == "deprovision_held", access_log.c.agent_id == run.agent_id
    )
    return any(isinstance(d, dict) and d.get("run") == run.id for d in (await c.execute(query)).scalars())


async def _runs(c: AsyncConnection, run_ids: Collection[str]) -> dict[str, RunRecord]:
    query = select(deprovision_runs).where(deprovision_runs.c.id.in_(list(run_ids)))
    return {r["id"]: run_from_row(r) for r in (await c.execute(query)).mappings()}


def due_and_free(now: datetime) -> list[ColumnElement[bool]]:
    """A step that may be claimed at ``now``: pending, due, and its lease free or lapsed."""
    steps = deprovision_steps.c
    return [
        steps.state == StepState.PENDING.value,
        steps.next_attempt_at <= to_db(now),
        or_(steps.lease_until.is_(None), steps.lease_until < to_db(now)),
    ]


def spent_steps(free: Sequence[ColumnElement[bool]], max_attempts: int) -> Select[int, str]:
    """The claimable steps whose budget of attempts is spent, found by ``ix_deprovision_steps_spent`` (migration
    0011): nearly never any, and each claim asks."""
    steps = deprovision_steps.c
    return select(steps.id, steps.run_id).where(*free, steps.attempts >= max_attempts).limit(COMMIT_LIMIT)


async def bury_spent(
    c: AsyncConnection, owner: str, now: datetime, free: Sequence[ColumnElement[bool]], budget: Budget
) -> Changes | None:
    """Dead-letter the due steps whose lease lapsed with their budget spent, in the claim's transaction ``c``:
    their runs locked first (the order recorders lock in), then their leases taken over by ``owner``, so the
    death is written as a result this worker records (``record_batch``)."""
    steps = deprovision_steps.c
    found = (await c.execute(spent_steps(free, budget.max_attempts))).all()
    if not found:
        return None
    run_ids = sorted({row[1] for row in found})
    await c.execute(
        select(deprovision_runs.c.id)
        .where(deprovision_runs.c.id.in_(run_ids))
        .order_by(deprovision_runs.c.id)
        .with_for_update()
    )
    taken = await c.execute(
        update(deprovision_steps)
        .where(steps.id.in_([row[0] for row in found]), *free, steps.attempts >= budget.max_attempts)
        .values(lease_owner=owner, lease_until=to_db(now), updated_at=to_db(now))
        .returning(*deprovision_steps.c)
    )
    records = sorted((step_from_row(row) for row in taken.mappings()), key=lambda s: s.id)
    if not records:
        return None
    runs = await _runs(c, {s.run_id for s in records})
    pairs = [(s, runs[s.run_id]) for s in records]
    return await record_batch(
        c, owner, [s.id for s in records], list(runs), lambda snapshot: budget.bury(pairs, snapshot, now)
    )
