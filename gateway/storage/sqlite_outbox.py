"""The deprovisioning trigger's transaction on SQLite, by ``sqlite3`` directly: the transactional outbox.

``SessionKiller.deprovision`` disables the agent, writes its access-log record and queues the pipeline run with
its steps in one transaction (``gateway/deprovision/kill.py``). Through the engine that was ten statements and
two transactions costing ~8 ms of CPU per agent, most of it SQLAlchemy and aiosqlite overhead; a bulk
offboarding of thousands of agents was bound by it. :class:`Outbox` offers the same operations, synchronously, on
the connection of a unit of the writer's group commit (``gateway.storage.sqlite_writer``), so the whole
transaction is one trip to the writer's thread and concurrent triggers share one commit.

Each operation writes exactly the row its repository writes through the engine (``AgentRepository.set_active``,
``AccessLogRepository.append``, ``PipelineRepository.create_run``) and reads rows back as those repositories do;
tests/contracts/three_way/test_deprovision_trigger_contract.py runs one trigger both ways and compares every row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent, user_name_key
from gateway.storage.pipeline_records import PlannedStep, RunRecord, idempotency_key
from gateway.storage.sqlite_batches import sqlite_datetime
from gateway.storage.sqlite_pipeline import INSERT_LOG, RUN_COLUMNS, log_rows, run_row
from gateway.storage.sqlite_writer import SqliteAccess, from_sqlite

T = TypeVar("T")

_AGENT = (
    "id, user_name, external_id, display_name, email, active, deleted_at, disabled_reason, oidc_issuer, "
    "oidc_subject, source, manager_id, employee_number, version, created_at, updated_at, enabled_at"
)


def _agent(row: Sequence[Any]) -> Agent:
    return Agent(
        id=row[0],
        user_name=row[1],
        external_id=row[2],
        display_name=row[3],
        email=row[4],
        active=bool(row[5]),
        deleted=row[6] is not None,
        disabled_reason=row[7],
        oidc_issuer=row[8],
        oidc_subject=row[9],
        source=row[10],
        manager_id=row[11],
        employee_number=row[12],
        version=row[13],
        created_at=from_sqlite(row[14]),
        updated_at=from_sqlite(row[15]),
        enabled_at=from_sqlite(row[16]) if row[16] is not None else None,
    )


class Outbox:
    """The trigger's operations on one transaction's connection (in the writer's thread)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection

    def find_agent(self, identifier: str) -> Agent | None:
        """The live agent whose id, else whose userName, is ``identifier`` (``AgentRepository.find``)."""
        for column, value in (("id", identifier), ("user_name_key", user_name_key(identifier))):
            row = self._conn.execute(
                f"SELECT {_AGENT} FROM agents WHERE {column} = ? AND deleted_at IS NULL",  # noqa: S608 - our column names
                (value,),
            ).fetchone()
            if row is not None:
                return _agent(row)
        return None

    def disable_agent(self, agent_id: str, reason: str, now: datetime) -> Agent | None:
        """``AgentRepository.set_active(agent_id, False, reason, now)``: None when no live agent has the id."""
        row = self._conn.execute(
            "UPDATE agents SET active = 0, disabled_reason = ?, version = version + 1, updated_at = ? "  # noqa: S608 - our column names
            f"WHERE id = ? AND deleted_at IS NULL RETURNING {_AGENT}",
            (reason, sqlite_datetime(now), agent_id),
        ).fetchone()
        return None if row is None else _agent(row)

    def append_log(self, records: Iterable[AccessRecord]) -> None:
        self._conn.executemany(INSERT_LOG, log_rows(records))

    def runs_of_agent(self, agent_id: str) -> list[RunRecord]:
        """The agent's runs, newest first (``PipelineRepository.runs_of_agent``)."""
        rows = self._conn.execute(
            f"SELECT {RUN_COLUMNS} FROM deprovision_runs WHERE agent_id = ? ORDER BY created_at DESC, id",  # noqa: S608 - our column names
            (agent_id,),
        )
        return [run_row(row) for row in rows]

    def runs_started_since(self, since: datetime) -> int:
        """``PipelineRepository.runs_started_since``: distinct agents deprovisioned at or after ``since``."""
        row = self._conn.execute(
            "SELECT count(DISTINCT agent_id) FROM deprovision_runs WHERE created_at >= ?", (sqlite_datetime(since),)
        ).fetchone()
        return int(row[0])

    def count_workforce(self, since: datetime) -> int:
        """``AgentRepository.count_workforce``: agents not deleted before ``since``."""
        row = self._conn.execute(
            "SELECT count(*) FROM agents WHERE deleted_at IS NULL OR deleted_at >= ?", (sqlite_datetime(since),)
        ).fetchone()
        return int(row[0])

    def create_run(self, run: RunRecord, steps: Sequence[PlannedStep]) -> None:
        """``PipelineRepository.create_run``: the run and its planned steps."""
        created = sqlite_datetime(run.created_at)
        self._conn.execute(
            "INSERT INTO deprovision_runs (id, agent_id, user_name, source, actor, reason, successor, state, "
            "created_at, finished_at, approved_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (
                run.id,
                run.agent_id,
                run.user_name,
                run.source,
                run.actor,
                run.reason,
                run.successor,
                run.state.value,
                created,
                sqlite_datetime(run.finished_at) if run.finished_at is not None else None,
            ),
        )
        self._conn.executemany(
            "INSERT INTO deprovision_steps (run_id, channel, step, state, attempts, next_attempt_at, "
            "idempotency_key, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
            [
                (
                    run.id,
                    s.channel,
                    s.step.value,
                    s.state.value,
                    created,
                    idempotency_key(run.id, s.channel, s.step),
                    created,
                )
                for s in steps
            ],
        )


class SqliteOutbox:
    """Runs trigger transactions (functions of an :class:`Outbox`) as units of the SQLite file's group commit."""

    def __init__(self, access: SqliteAccess) -> None:
        self._writer = access.writer

    async def run(self, transaction: Callable[[Outbox], T]) -> T:
        """``transaction(outbox)`` in one transaction: all of its writes commit, or none (it raised)."""
        return await self._writer.run(lambda connection: transaction(Outbox(connection)))

    async def append_log(self, records: Sequence[AccessRecord]) -> None:
        """A strict access-log write (``AuditLog.write``): returns once the records are committed."""
        await self.run(lambda outbox: outbox.append_log(records))
