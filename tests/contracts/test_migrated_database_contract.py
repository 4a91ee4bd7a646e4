"""The migrated database on SQLite and PostgreSQL: the migrations build the schema ``schema.py`` declares (partial
unique index, foreign keys enforced), migrating again changes nothing, ``ping`` answers, a failed connection's
error never carries the password, and runs superseded before migration 0007 stop being reported done."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import SecretStr
from sqlalchemy import insert, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.database import Database, create_engine
from gateway.storage.migrate import alembic_config, current_revision, head_revision, upgrade_to_head
from gateway.storage.schema import deprovision_runs, deprovision_steps, group_members, metadata

PASSWORD = "hunter2-Secret"


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _live_user_name_index(connection: Connection) -> tuple[bool, str]:
    """(unique, WHERE clause) of the partial index, which ``compare_metadata`` does not compare."""
    index = next(i for i in sa_inspect(connection).get_indexes("agents") if i["name"] == "uq_agents_live_user_name_key")
    where = next(str(value) for key, value in index.get("dialect_options", {}).items() if key.endswith("_where"))
    return bool(index["unique"]), " ".join(where.lower().strip("()").split())


async def test_migrations_match_the_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []
        assert await conn.run_sync(current_revision) == head_revision()
        assert await conn.run_sync(_live_user_name_index) == (True, "deleted_at is null")


async def test_migrating_an_up_to_date_database_changes_nothing(database_url: str, engine: AsyncEngine) -> None:
    await upgrade_to_head(database_url)
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []


async def test_foreign_keys_are_enforced(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(group_members).values(group_id="no-such-group", agent_id="no-such-agent"))


async def test_ping_answers_on_a_reachable_database(database: Database) -> None:
    await database.ping()


async def _join_aiosqlite_workers() -> None:
    """Let aiosqlite's worker finish before the loop closes: after a failed connect it still posts a result
    to the loop and fails in its thread if the loop is gone (omnilib/aiosqlite#241)."""
    workers = [t for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)")]
    for worker in workers:
        await asyncio.to_thread(worker.join, 5)


async def test_storage_error_message_never_contains_the_password(database_url: str, tmp_path: Path) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        broken = url.set(password=PASSWORD, database="no_such_database")
    else:
        broken = url.set(database=str(tmp_path))  # a directory: SQLite cannot open it
    database = Database.from_settings(DatabaseSettings(url=SecretStr(broken.render_as_string(hide_password=False))))

    with pytest.raises(StorageError) as failed:
        await database.ping()
    await database.dispose()
    await _join_aiosqlite_workers()

    error = failed.value
    assert error.status == 503
    for text in (str(error), repr(error), error.detail or ""):
        assert PASSWORD not in text
    assert error.__cause__ is None
    assert error.__suppress_context__


def _alembic(connection: Connection, revision: str, down: bool) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


async def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    engine = create_engine(DatabaseSettings(url=SecretStr(url)), enforce_foreign_keys=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, revision, down)
    finally:
        await engine.dispose()


MOMENT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
#: Runs as the release before migration 0007 left them: superseded ones stored done (or in attention).
OLD_RUNS = {
    "by-scim": ("done", [("chat", "revoke", "done", "seat disabled"),
                         ("chat", "verify", "not_applicable", "superseded: the agent was made active again by "
                                                              "scim:entra (enabled by SCIM)")]),
    "by-worker": ("attention", [("phone", "revoke", "not_applicable",
                                 "skipped: bob is active again; this run's disable no longer holds"),
                                ("phone", "verify", "failed", "the seat is active")]),
    "finished": ("done", [("mail", "revoke", "done", "logged out"),
                          ("mail", "hand_over", "not_applicable", "the channel has no ticket API configured")]),
}  # fmt: skip


async def _runs_and_steps(engine: AsyncEngine) -> dict[str, tuple[str, list[str]]]:
    async with engine.connect() as conn:
        runs = dict((await conn.execute(select(deprovision_runs.c.id, deprovision_runs.c.state))).all())
        steps = (
            await conn.execute(
                select(deprovision_steps.c.run_id, deprovision_steps.c.state).order_by(deprovision_steps.c.id)
            )
        ).all()
    return {run: (state, [s for r, s in steps if r == run]) for run, state in runs.items()}


async def test_migration_0007_gives_runs_superseded_before_it_their_own_state_and_back(database_url: str) -> None:
    await _migrate(database_url, "0006")
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    try:
        async with database.engine.begin() as conn:
            for run_id, (state, steps) in OLD_RUNS.items():
                await conn.execute(
                    insert(deprovision_runs).values(
                        id=run_id, agent_id=f"agent-{run_id}", user_name="bob", source="scim", actor="scim:entra",
                        reason="left", state=state, created_at=MOMENT, finished_at=MOMENT,
                    )
                )  # fmt: skip
                await conn.execute(
                    insert(deprovision_steps),
                    [
                        {"run_id": run_id, "channel": channel, "step": step, "state": step_state, "attempts": 1,
                         "next_attempt_at": MOMENT, "idempotency_key": f"{run_id}:{channel}:{step}", "detail": detail,
                         "updated_at": MOMENT}
                        for channel, step, step_state, detail in steps
                    ],
                )  # fmt: skip
        await upgrade_to_head(database_url)
        assert await _runs_and_steps(database.engine) == {
            "by-scim": ("superseded", ["done", "superseded"]),
            "by-worker": ("superseded", ["superseded", "failed"]),
            "finished": ("done", ["done", "not_applicable"]),
        }
        await _migrate(database_url, "0006", down=True)
        assert await _runs_and_steps(database.engine) == {
            run_id: (state, [step[2] for step in steps]) for run_id, (state, steps) in OLD_RUNS.items()
        }
    finally:
        await database.dispose()
