"""The deprovisioning pipeline's state: runs and their steps (tables ``deprovision_runs``, ``deprovision_steps``).

A run and its planned steps are inserted in the trigger's own transaction (with the agent's ``active = false``
and its access-log record), so the queued work exists exactly when the state change does: a transactional
outbox. Workers *claim* due steps with a lease (``lease_owner``/``lease_until``, taken over when it lapses, so a
crashed replica's steps are not lost) and *finish* them fenced by that lease: a worker whose lease was taken
over cannot overwrite the newer owner's result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import RowMapping, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.deprovision.plan import RunState, StepKind, StepState, requeue
from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.schema import deprovision_runs, deprovision_steps


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    agent_id: str
    user_name: str
    source: str
    actor: str
    reason: str
    successor: str | None
    state: RunState
    created_at: datetime
    finished_at: datetime | None
    approved_by: str | None

    @property
    def held(self) -> bool:
        return self.state is RunState.HELD

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.id,
            "agent_id": self.agent_id,
            "user_name": self.user_name,
            "source": self.source,
            "actor": self.actor,
            "reason": self.reason,
            "successor": self.successor,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "approved_by": self.approved_by,
        }


@dataclass(frozen=True, slots=True)
class StepRecord:
    id: int
    run_id: str
    channel: str
    step: StepKind
    state: StepState
    attempts: int
    next_attempt_at: datetime
    idempotency_key: str
    vendor_reference: str | None
    detail: str | None
    updated_at: datetime

    def as_dict(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "step": self.step.value,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat() if self.state is StepState.PENDING else None,
            "vendor_reference": self.vendor_reference,
            "detail": self.detail,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class PlannedStep:
    channel: str
    step: StepKind
    state: StepState


@dataclass(frozen=True, slots=True)
class StepFinish:
    """What a worker learned from one attempt; written by :meth:`PipelineRepository.finish`."""

    step_id: int
    state: StepState
    next_attempt_at: datetime
    vendor_reference: str | None
    detail: str


def _run(row: RowMapping) -> RunRecord:
    return RunRecord(
        id=row["id"],
        agent_id=row["agent_id"],
        user_name=row["user_name"],
        source=row["source"],
        actor=row["actor"],
        reason=row["reason"],
        successor=row["successor"],
        state=RunState(row["state"]),
        created_at=from_db(row["created_at"]),
        finished_at=from_db(row["finished_at"]) if row["finished_at"] is not None else None,
        approved_by=row["approved_by"],
    )


def _step(row: RowMapping) -> StepRecord:
    return StepRecord(
        id=row["id"],
        run_id=row["run_id"],
        channel=row["channel"],
        step=StepKind(row["step"]),
        state=StepState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=from_db(row["next_attempt_at"]),
        idempotency_key=row["idempotency_key"],
        vendor_reference=row["vendor_reference"],
        detail=row["detail"],
        updated_at=from_db(row["updated_at"]),
    )


def idempotency_key(run_id: str, channel: str, step: StepKind) -> str:
    """Stable across every attempt of one step (and so across crashes and replicas): the vendor dedupes on it."""
    return f"channelgate:{run_id}:{channel}:{step.value}"


class PipelineRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

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
                    finished_at=None,
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
        self, owner: str, now: datetime, lease_until: datetime, limit: int, *, conn: AsyncConnection | None = None
    ) -> list[tuple[StepRecord, RunRecord]]:
        """Take up to ``limit`` due steps whose lease is free or lapsed; each claim counts as an attempt (so a step
        that crashes its worker every time still spends its budget and dead-letters)."""
        due = (
            select(deprovision_steps.c.id)
            .where(
                deprovision_steps.c.state == StepState.PENDING.value,
                deprovision_steps.c.next_attempt_at <= to_db(now),
                or_(deprovision_steps.c.lease_until.is_(None), deprovision_steps.c.lease_until < to_db(now)),
            )
            .order_by(deprovision_steps.c.next_attempt_at, deprovision_steps.c.id)
            .limit(limit)
            # PostgreSQL: replicas claiming at once skip each other's rows instead of queueing on them.
            .with_for_update(skip_locked=True)
        )
        async with write_transaction(self._engine, conn) as c:
            ids = list((await c.execute(due)).scalars())
            if not ids:
                return []
            claimed = await c.execute(
                update(deprovision_steps)
                .where(deprovision_steps.c.id.in_(ids))
                .values(
                    lease_owner=owner,
                    lease_until=to_db(lease_until),
                    attempts=deprovision_steps.c.attempts + 1,
                    updated_at=to_db(now),
                )
                .returning(*deprovision_steps.c)
            )
            steps = [_step(row) for row in claimed.mappings()]
            run_ids = {s.run_id for s in steps}
            runs = {
                r["id"]: _run(r)
                for r in (
                    await c.execute(select(deprovision_runs).where(deprovision_runs.c.id.in_(run_ids)))
                ).mappings()
            }
        return [(s, runs[s.run_id]) for s in sorted(steps, key=lambda s: s.id)]

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
                detail=finish.detail[:2000],
                updated_at=to_db(now),
            )
            .returning(*deprovision_steps.c)
        )
        row = result.mappings().first()
        return None if row is None else _step(row)

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
        finished = state in (RunState.DONE, RunState.ATTENTION)
        result = await conn.execute(
            update(deprovision_runs)
            .where(deprovision_runs.c.id == run_id, deprovision_runs.c.state != state.value)
            .values(state=state.value, finished_at=to_db(now) if finished else None)
            .returning(*deprovision_runs.c)
        )
        row = result.mappings().first()
        return None if row is None else _run(row)

    async def get_run(self, run_id: str, *, conn: AsyncConnection | None = None) -> RunRecord | None:
        async with read_transaction(self._engine, conn) as c:
            row = (await c.execute(select(deprovision_runs).where(deprovision_runs.c.id == run_id))).mappings().first()
        return None if row is None else _run(row)

    async def steps_of(self, run_ids: Iterable[str], *, conn: AsyncConnection | None = None) -> list[StepRecord]:
        ids = list(run_ids)
        query = (
            select(deprovision_steps)
            .where(deprovision_steps.c.run_id.in_(ids))
            .order_by(deprovision_steps.c.run_id, deprovision_steps.c.id)
        )
        async with read_transaction(self._engine, conn) as c:
            return [_step(row) for row in (await c.execute(query)).mappings()]

    async def runs_of_agent(self, agent_id: str, *, conn: AsyncConnection | None = None) -> list[RunRecord]:
        """The agent's deprovisioning runs, newest first."""
        query = (
            select(deprovision_runs)
            .where(deprovision_runs.c.agent_id == agent_id)
            .order_by(deprovision_runs.c.created_at.desc(), deprovision_runs.c.id)
        )
        async with read_transaction(self._engine, conn) as c:
            return [_run(row) for row in (await c.execute(query)).mappings()]

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
            return [_run(row) for row in (await c.execute(query)).mappings()]

    async def approve(
        self, run_ids: Sequence[str] | None, actor: str, now: datetime, *, conn: AsyncConnection | None = None
    ) -> list[str]:
        """Release held runs (all of them when ``run_ids`` is None): their held steps become due."""
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
        order per channel (``gateway.deprovision.plan.requeue``); returns how many steps are due again."""
        async with write_transaction(self._engine, conn) as c:
            steps = await self.steps_of([run_id], conn=c)
            due = 0
            for channel in sorted({s.channel for s in steps}):
                moves = requeue({s.step: s.state for s in steps if s.channel == channel})
                for kind, state in moves.items():
                    await c.execute(
                        update(deprovision_steps)
                        .where(
                            deprovision_steps.c.run_id == run_id,
                            deprovision_steps.c.channel == channel,
                            deprovision_steps.c.step == kind.value,
                        )
                        .values(
                            state=state.value,
                            attempts=0,
                            next_attempt_at=to_db(now),
                            lease_owner=None,
                            lease_until=None,
                            updated_at=to_db(now),
                        )
                    )
                    due += state is StepState.PENDING
            if due:
                await c.execute(
                    update(deprovision_runs)
                    .where(deprovision_runs.c.id == run_id)
                    .values(state=RunState.RUNNING.value, finished_at=None)
                )
        return due

    async def count_steps(self, *, conn: AsyncConnection | None = None) -> dict[StepState, int]:
        query = select(deprovision_steps.c.state, func.count()).group_by(deprovision_steps.c.state)
        async with read_transaction(self._engine, conn) as c:
            return {StepState(state): int(n) for state, n in (await c.execute(query)).all()}

    async def next_due(self, *, conn: AsyncConnection | None = None) -> datetime | None:
        """When the earliest pending step is due (for a worker deciding how long to sleep)."""
        query = select(func.min(deprovision_steps.c.next_attempt_at)).where(
            and_(deprovision_steps.c.state == StepState.PENDING.value)
        )
        async with read_transaction(self._engine, conn) as c:
            value = (await c.execute(query)).scalar_one_or_none()
        return None if value is None else from_db(value)
