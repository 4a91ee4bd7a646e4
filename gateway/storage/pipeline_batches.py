"""The worker's batch statements through the engine (PostgreSQL; SQLite without a file of its own).

A batch of results is recorded with a fixed handful of statements whatever its size: the batch's runs and all
their steps read once, locked (``SELECT ... FOR UPDATE``: on PostgreSQL two replicas recording the last steps of
one run each would otherwise both see the other's step unfinished and leave the run running for ever), then each
kind of change written by one ``executemany``. ``gateway.storage.sqlite_pipeline`` does the same by ``sqlite3``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import FromClause, and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.deprovision.plan import FINISHED_RUNS, RunState, StepState
from gateway.deprovision.results import supersede
from gateway.storage._time import to_db
from gateway.storage.access_log import AccessRecord, insert_row
from gateway.storage.limits import fit_text
from gateway.storage.pipeline_records import (
    RUN_STATES,
    STEP_DETAIL_LENGTH,
    STEP_KINDS,
    STEP_STATES,
    Changes,
    Person,
    RunPeople,
    Sibling,
    Snapshot,
    run_from_row,
)
from gateway.storage.schema import access_log, agents, deprovision_runs, deprovision_steps

#: Decides what recording a batch changes, from the snapshot read in the recording transaction
#: (``gateway.deprovision.results.settle``).
Decide = Callable[[Snapshot], Changes]

_PENDING = StepState.PENDING.value


async def record_batch(
    c: AsyncConnection, owner: str, step_ids: Collection[int], run_ids: Collection[str], decide: Decide
) -> Changes:
    """``PipelineRepository.record`` in the write transaction ``c``."""
    ids = sorted(set(run_ids))
    # Runs first, then steps, both in id order: one lock order, so two recorders cannot deadlock.
    runs_table = deprovision_runs.c
    query = select(runs_table.id, runs_table.state).where(runs_table.id.in_(ids)).order_by(runs_table.id)
    runs = {row[0]: RUN_STATES[row[1]] for row in (await c.execute(query.with_for_update())).all()}
    steps = deprovision_steps.c
    query = (
        select(steps.id, steps.run_id, steps.channel, steps.step, steps.state, steps.lease_owner)
        .where(steps.run_id.in_(ids))
        .order_by(steps.run_id, steps.id)
    )
    rows = (await c.execute(query.with_for_update())).all()
    wanted = set(step_ids)
    held = frozenset(row[0] for row in rows if row[0] in wanted and row[5] == owner and row[4] == _PENDING)
    siblings = [Sibling(r[0], r[1], r[2], STEP_KINDS[r[3]], STEP_STATES[r[4]]) for r in rows]
    changes = decide(Snapshot(siblings, runs, held))
    await _write(c, owner, changes)
    return changes


async def _write(c: AsyncConnection, owner: str, changes: Changes) -> None:
    now = to_db(changes.now)
    steps = deprovision_steps.c
    if changes.finishes:
        await c.execute(
            update(deprovision_steps)
            .where(steps.id == bindparam("b_id"), steps.lease_owner == owner, steps.state == _PENDING)
            .values(
                state=bindparam("b_state"),
                next_attempt_at=bindparam("b_next"),
                lease_owner=None,
                lease_until=None,
                vendor_reference=bindparam("b_reference"),
                detail=bindparam("b_detail"),
                updated_at=now,
            ),
            [
                {
                    "b_id": f.step_id,
                    "b_state": f.state.value,
                    "b_next": to_db(f.next_attempt_at),
                    "b_reference": f.vendor_reference,
                    "b_detail": f.detail,
                }
                for f in changes.finishes
            ],
        )
    if changes.unlocked:
        await c.execute(
            update(deprovision_steps)
            .where(steps.id == bindparam("b_id"))
            .values(state=bindparam("b_state"), next_attempt_at=now, updated_at=now),
            [{"b_id": step_id, "b_state": state.value} for step_id, state in changes.unlocked],
        )
    if changes.runs:
        await c.execute(
            update(deprovision_runs)
            .where(deprovision_runs.c.id == bindparam("b_id"))
            .values(state=bindparam("b_state"), finished_at=bindparam("b_finished")),
            [
                {"b_id": run_id, "b_state": state.value, "b_finished": now if state in FINISHED_RUNS else None}
                for run_id, state in changes.runs
            ],
        )
    await _insert_records(c, changes.records)


def _person_columns(table: FromClause) -> list[Any]:
    return [table.c.id, table.c.user_name, table.c.email, table.c.active, table.c.deleted_at]


def _person(row: Sequence[Any], at: int) -> Person | None:
    if row[at] is None:
        return None
    return Person(row[at], row[at + 1], row[at + 2], bool(row[at + 3]), row[at + 4] is not None)


async def read_people(c: AsyncConnection, run_ids: Collection[str]) -> dict[str, RunPeople]:
    """``PipelineRepository.people_of`` in the read transaction ``c``."""
    manager = agents.alias("manager")
    joined = deprovision_runs.outerjoin(agents, agents.c.id == deprovision_runs.c.agent_id).outerjoin(
        manager, and_(manager.c.id == agents.c.manager_id, manager.c.deleted_at.is_(None))
    )
    query = (
        select(deprovision_runs.c.id, deprovision_runs.c.successor, *_person_columns(agents), *_person_columns(manager))
        .select_from(joined)
        .where(deprovision_runs.c.id.in_(list(run_ids)))
    )
    rows = (await c.execute(query)).all()
    # userNames compared as AgentRepository.find_by_user_name does: by the Python-lowered key.
    keys = {row[1].lower() for row in rows if row[1]}
    named: dict[str, Person] = {}
    if keys:
        found = select(*_person_columns(agents), agents.c.user_name_key).where(
            agents.c.user_name_key.in_(keys), agents.c.deleted_at.is_(None)
        )
        for row in (await c.execute(found)).all():
            person = _person(row, 0)
            if person is not None:
                named[row[5]] = person
    return {
        row[0]: RunPeople(_person(row, 2), _person(row, 7), named.get(row[1].lower()) if row[1] else None)
        for row in rows
    }


async def supersede_runs(c: AsyncConnection, agent_id: str, now: datetime, *, actor: str, reason: str) -> list[str]:
    """The agent was made active again in the transaction ``c``: its running and held runs end there, superseded,
    their unfinished steps superseded (not taken), with a receipt for each and a record for each run naming what it
    had carried out (``gateway.deprovision.results.supersede``). A worker holding a lease on one of those steps
    then cannot record it (its step is no longer pending). Runs that ended needing attention are superseded too,
    their steps left as they ended: what failed there no longer keeps an active agent's access from ending, and a
    person's only work left is what the record lists to undo (a done run ended the access; it stays done).
    Returns the runs' ids."""
    going = (RunState.RUNNING.value, RunState.HELD.value, RunState.ATTENTION.value)
    # Runs first, then steps, in id order: the order recorders lock in.
    query = (
        select(deprovision_runs)
        .where(deprovision_runs.c.agent_id == agent_id, deprovision_runs.c.state.in_(going))
        .order_by(deprovision_runs.c.id)
    )
    runs = [run_from_row(row) for row in (await c.execute(query.with_for_update())).mappings()]
    if not runs:
        return []
    steps = deprovision_steps.c
    rows = (
        await c.execute(
            select(steps.id, steps.run_id, steps.channel, steps.step, steps.state)
            .where(steps.run_id.in_([r.id for r in runs]))
            .order_by(steps.run_id, steps.id)
            .with_for_update()
        )
    ).all()
    siblings = [Sibling(r[0], r[1], r[2], STEP_KINDS[r[3]], STEP_STATES[r[4]]) for r in rows]
    decided = supersede(runs, siblings, now, actor=actor, reason=reason)
    moment = to_db(now)
    if decided.steps:
        await c.execute(
            update(deprovision_steps)
            .where(steps.id.in_(list(decided.steps)))
            .values(
                state=StepState.SUPERSEDED.value,
                lease_owner=None,
                lease_until=None,
                detail=fit_text(decided.detail, STEP_DETAIL_LENGTH),
                updated_at=moment,
            )
        )
    await c.execute(
        update(deprovision_runs)
        .where(deprovision_runs.c.id == bindparam("b_id"))
        .values(state=bindparam("b_state"), finished_at=moment),
        [{"b_id": run_id, "b_state": state.value} for run_id, state in decided.runs],
    )
    await _insert_records(c, decided.records)
    return [r.id for r in runs]


async def _insert_records(c: AsyncConnection, records: Sequence[AccessRecord]) -> None:
    if records:
        rows = [insert_row(record) for record in records]
        await c.execute(insert(access_log), rows)
