"""The pipeline worker's statements on SQLite, by ``sqlite3`` directly (``gateway.storage.sqlite_writer``).

A bulk offboarding's worker claims, records and looks people up thousands of times a second; through SQLAlchemy
and aiosqlite each of those cost about as much CPU as the channel calls they serve. Here a claim is one
statement and a batch of results a handful (``executemany``), each a unit of the writer's group commit, and the
people of a batch's runs are one indexed read on the event loop. The rows are exactly what the SQLAlchemy
repository writes (timestamps in its ``DATETIME`` text, access-log ``detail`` as JSON text): both read back
alike, and both meet tests/contracts/three_way/test_pipeline_storage_contract.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from gateway.deprovision.plan import FINISHED_RUNS, StepState
from gateway.storage.access_log import INSERT_COLUMNS, AccessRecord, insert_values
from gateway.storage.pipeline_records import (
    RUN_STATES,
    STEP_KINDS,
    STEP_STATES,
    Budget,
    Changes,
    Person,
    RunPeople,
    RunRecord,
    Sibling,
    Snapshot,
    StepRecord,
)
from gateway.storage.sqlite_batches import sqlite_datetime
from gateway.storage.sqlite_writer import SqliteAccess, from_sqlite

STEP_COLUMNS = (
    "id, run_id, channel, step, state, attempts, next_attempt_at, idempotency_key, vendor_reference, detail, updated_at"
)
RUN_COLUMNS = "id, agent_id, user_name, source, actor, reason, successor, state, created_at, finished_at, approved_by"
_PERSON = "{0}.id, {0}.user_name, {0}.email, {0}.active, {0}.deleted_at"
INSERT_LOG = f"INSERT INTO access_log ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join('?' for _ in INSERT_COLUMNS)})"  # noqa: S608 - names from our schema
_PENDING = StepState.PENDING.value
log = logging.getLogger("channelgate.deprovision")
#: Spent steps dead-lettered by one claim at most (the rest by the next).
SPENT_LIMIT = 200
# The statements, written once; "(?*)" stands for as many placeholders as the call has values (``_listing``).
_CLAIM = (
    "UPDATE deprovision_steps SET lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ? "  # noqa: S608 - our column names
    "WHERE id IN (SELECT id FROM deprovision_steps WHERE state = ? AND next_attempt_at <= ? "
    "AND (lease_until IS NULL OR lease_until < ?) AND attempts < ? ORDER BY next_attempt_at, id LIMIT ?) "
    f"RETURNING {STEP_COLUMNS}"
)
# A due step whose lease lapsed with its budget spent, taken over to record its death (``Budget``). Named index:
# with the statistics ANALYZE leaves (few distinct attempt counts) SQLite's planner prefers ix_deprovision_steps_due,
# which reads every due step of a bulk offboarding at every claim (migration 0011).
_SPENT = (
    "UPDATE deprovision_steps SET lease_owner = ?, lease_until = ?, updated_at = ? "  # noqa: S608 - our column names
    "WHERE id IN (SELECT id FROM deprovision_steps INDEXED BY ix_deprovision_steps_spent WHERE state = ? "
    "AND next_attempt_at <= ? "
    "AND (lease_until IS NULL OR lease_until < ?) AND attempts >= ? LIMIT ?) "
    f"RETURNING {STEP_COLUMNS}"
)
_RUNS = f"SELECT {RUN_COLUMNS} FROM deprovision_runs WHERE id IN (?*)"  # noqa: S608 - our column names
_RUN_STATES = "SELECT id, state FROM deprovision_runs WHERE id IN (?*)"
_STEPS_OF_RUNS = (
    "SELECT id, run_id, channel, step, state, lease_owner FROM deprovision_steps WHERE run_id IN (?*) "
    "ORDER BY run_id, id"
)
_PEOPLE = (
    f"SELECT r.id, r.successor, {_PERSON.format('a')}, {_PERSON.format('m')} FROM deprovision_runs r "  # noqa: S608 - our column names
    "LEFT JOIN agents a ON a.id = r.agent_id "
    "LEFT JOIN agents m ON m.id = a.manager_id AND m.deleted_at IS NULL "
    "WHERE r.id IN (?*)"
)
_NAMED = (
    f"SELECT {_PERSON.format('agents')}, user_name_key FROM agents "  # noqa: S608 - our column names
    "WHERE user_name_key IN (?*) AND deleted_at IS NULL"
)


def _listing(sql: str, count: int) -> str:
    return sql.replace("(?*)", "(" + ", ".join("?" for _ in range(count)) + ")")


def step_row(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        id=row[0],
        run_id=row[1],
        channel=row[2],
        step=STEP_KINDS[row[3]],
        state=STEP_STATES[row[4]],
        attempts=row[5],
        next_attempt_at=from_sqlite(row[6]),
        idempotency_key=row[7],
        vendor_reference=row[8],
        detail=row[9],
        updated_at=from_sqlite(row[10]),
    )


def run_row(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0],
        agent_id=row[1],
        user_name=row[2],
        source=row[3],
        actor=row[4],
        reason=row[5],
        successor=row[6],
        state=RUN_STATES[row[7]],
        created_at=from_sqlite(row[8]),
        finished_at=from_sqlite(row[9]) if row[9] is not None else None,
        approved_by=row[10],
    )


_TIME, _DETAIL = INSERT_COLUMNS.index("time"), INSERT_COLUMNS.index("detail")


def log_rows(records: Iterable[AccessRecord]) -> list[list[Any]]:
    """Access-log rows as SQLAlchemy writes them: ``time`` in its DATETIME text, ``detail`` as JSON text (its JSON
    type writes None as 'null')."""
    times: dict[datetime, str] = {}  # a batch's records mostly share one moment
    rows = []
    for record in records:
        row = list(insert_values(record))  # fitted to the columns, the record copied only when one needs it
        text = times.get(record.time)
        if text is None:
            text = times[record.time] = sqlite_datetime(record.time)
        row[_TIME], row[_DETAIL] = text, json.dumps(row[_DETAIL])  # the detail as fitted: it may name what was
        rows.append(row)
    return rows


def _person(row: Sequence[Any], at: int) -> Person | None:
    if row[at] is None:
        return None
    return Person(row[at], row[at + 1], row[at + 2], bool(row[at + 3]), row[at + 4] is not None)


class SqlitePipeline:
    """Claims, batch results and people reads of the pipeline on one SQLite file."""

    def __init__(self, access: SqliteAccess) -> None:
        self._access = access

    async def claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int, budget: Budget
    ) -> list[tuple[StepRecord, RunRecord]]:
        moment = sqlite_datetime(now)
        ceiling = budget.max_attempts

        def unit(conn: sqlite3.Connection) -> list[tuple[StepRecord, RunRecord]]:
            spent = _spent_steps(conn, (owner, moment, moment, _PENDING, moment, moment, ceiling, SPENT_LIMIT))
            pairs = _with_runs(conn, [step_row(row) for row in spent])
            if pairs:
                _record(conn, owner, [s.id for s, _ in pairs], [r.id for _, r in pairs],
                        lambda snapshot: budget.bury(pairs, snapshot, now))  # fmt: skip
            claimed = conn.execute(
                _CLAIM, (owner, sqlite_datetime(lease_until), moment, _PENDING, moment, moment, ceiling, limit)
            ).fetchall()
            return _with_runs(conn, [step_row(row) for row in claimed])

        return await self._access.writer.run(unit)

    async def record(
        self, owner: str, step_ids: Collection[int], run_ids: Collection[str], decide: Callable[[Snapshot], Changes]
    ) -> Changes:
        return await self._access.writer.run(lambda conn: _record(conn, owner, step_ids, run_ids, decide))

    async def people_of(self, run_ids: Collection[str]) -> dict[str, RunPeople]:
        ids = list(run_ids)

        def read(conn: sqlite3.Connection) -> dict[str, RunPeople]:
            rows = conn.execute(_listing(_PEOPLE, len(ids)), ids).fetchall()
            # userNames compared as AgentRepository.find_by_user_name does: by the Python-lowered key.
            keys = sorted({row[1].lower() for row in rows if row[1]})
            named: dict[str, Person] = {}
            if keys:
                for found in conn.execute(_listing(_NAMED, len(keys)), keys):
                    person = _person(found, 0)
                    assert person is not None
                    named[found[5]] = person
            return {
                row[0]: RunPeople(_person(row, 2), _person(row, 7), named.get(row[1].lower()) if row[1] else None)
                for row in rows
            }

        return await self._access.reader.run(read)


def _spent_steps(conn: sqlite3.Connection, values: Sequence[Any]) -> list[Any]:
    """``_SPENT``; on a file not yet migrated to 0011 (this release started before ``channelgate migrate`` ran) the
    same statement without the index it names: slower, never stopped (logged)."""
    try:
        return conn.execute(_SPENT, values).fetchall()
    except sqlite3.OperationalError as error:
        if "no such index" not in str(error):
            raise
    global _UNMIGRATED_LOGGED
    if not _UNMIGRATED_LOGGED:
        log.warning("the database is not migrated to this release (no ix_deprovision_steps_spent): run "
                    "`channelgate migrate`; claims are slower until then")  # fmt: skip
        _UNMIGRATED_LOGGED = True
    return conn.execute(_SPENT_UNMIGRATED, values).fetchall()


_SPENT_UNMIGRATED = _SPENT.replace(" INDEXED BY ix_deprovision_steps_spent", "")
_UNMIGRATED_LOGGED = False


def _with_runs(conn: sqlite3.Connection, steps: Iterable[StepRecord]) -> list[tuple[StepRecord, RunRecord]]:
    ordered = sorted(steps, key=lambda s: s.id)
    if not ordered:
        return []
    ids = sorted({s.run_id for s in ordered})
    runs = {row[0]: run_row(row) for row in conn.execute(_listing(_RUNS, len(ids)), ids)}
    return [(s, runs[s.run_id]) for s in ordered]


def _record(
    conn: sqlite3.Connection,
    owner: str,
    step_ids: Collection[int],
    run_ids: Collection[str],
    decide: Callable[[Snapshot], Changes],
) -> Changes:
    """``SqlitePipeline.record`` on the connection of a unit of the writer (its transaction is BEGIN IMMEDIATE: no
    other writer changes these rows until it commits)."""
    wanted = set(step_ids)
    ids = sorted(set(run_ids))
    runs = {row[0]: RUN_STATES[row[1]] for row in conn.execute(_listing(_RUN_STATES, len(ids)), ids)}
    rows = conn.execute(_listing(_STEPS_OF_RUNS, len(ids)), ids).fetchall()
    held = frozenset(row[0] for row in rows if row[0] in wanted and row[5] == owner and row[4] == _PENDING)
    siblings = [Sibling(r[0], r[1], r[2], STEP_KINDS[r[3]], STEP_STATES[r[4]]) for r in rows]
    changes = decide(Snapshot(siblings, runs, held))
    _write(conn, owner, changes)
    return changes


def _write(conn: sqlite3.Connection, owner: str, changes: Changes) -> None:
    now = sqlite_datetime(changes.now)
    if changes.finishes:
        conn.executemany(
            "UPDATE deprovision_steps SET state = ?, next_attempt_at = ?, lease_owner = NULL, lease_until = NULL, "
            "vendor_reference = ?, detail = ?, updated_at = ? WHERE id = ? AND lease_owner = ? AND state = ?",
            [
                (
                    f.state.value,
                    sqlite_datetime(f.next_attempt_at),
                    f.vendor_reference,
                    f.detail,
                    now,
                    f.step_id,
                    owner,
                    _PENDING,
                )
                for f in changes.finishes
            ],
        )
    if changes.unlocked:
        conn.executemany(
            "UPDATE deprovision_steps SET state = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
            [(state.value, now, now, step_id) for step_id, state in changes.unlocked],
        )
    if changes.runs:
        conn.executemany(
            "UPDATE deprovision_runs SET state = ?, finished_at = ? WHERE id = ?",
            [(state.value, now if state in FINISHED_RUNS else None, run_id) for run_id, state in changes.runs],
        )
    if changes.records:
        conn.executemany(INSERT_LOG, log_rows(changes.records))
