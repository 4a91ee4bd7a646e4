"""The SQLite engine settings, migration packaging and error hygiene, without any server."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.database import Database, create_engine, safe_url
from gateway.storage.migrate import MIGRATIONS, database_revision, head_revision, upgrade_to_head

PASSWORD = "hunter2-Secret"


def _settings(url: str) -> DatabaseSettings:
    return DatabaseSettings(url=SecretStr(url), connect_timeout_seconds=0.5)


async def _pragma(engine: AsyncEngine, name: str) -> object:
    async with engine.connect() as conn:
        return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()


async def test_sqlite_runs_in_wal_mode_with_full_sync_and_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(_settings(f"sqlite+aiosqlite:///{tmp_path}/gateway.db"))
    try:
        assert await _pragma(engine, "journal_mode") == "wal"
        assert await _pragma(engine, "synchronous") == 2  # FULL: a committed audit record survives power loss
        assert await _pragma(engine, "foreign_keys") == 1
        assert await _pragma(engine, "busy_timeout") == 500
    finally:
        await engine.dispose()


async def test_sqlite_creates_the_database_directory(tmp_path: Path) -> None:
    database = Database.from_settings(_settings(f"sqlite+aiosqlite:///{tmp_path}/a/b/gateway.db"))
    await database.ping()
    await database.dispose()

    assert (tmp_path / "a" / "b" / "gateway.db").is_file()


async def test_a_new_sqlite_database_and_its_wal_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask, under which SQLite alone creates files 0644
    try:
        database = Database.from_settings(_settings(f"sqlite+aiosqlite:///{tmp_path}/data/gateway.db"))
        await upgrade_to_head(_settings(f"sqlite+aiosqlite:///{tmp_path}/data/gateway.db"))
        async with database.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            await conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
        files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "data").iterdir()}
        await database.dispose()
    finally:
        os.umask(previous)

    assert {"gateway.db", "gateway.db-wal", "gateway.db-shm"} <= files.keys()
    assert files == dict.fromkeys(files, 0o600)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


async def test_an_existing_database_file_keeps_the_permissions_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    database = Database.from_settings(_settings(f"sqlite+aiosqlite:///{path}"))
    await database.ping()
    await database.dispose()

    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_database_directory_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")

    with pytest.raises(StorageError, match="cannot create the database directory"):
        create_engine(_settings(f"sqlite+aiosqlite:///{tmp_path}/file/gateway.db"))


async def test_sqlite_write_transactions_queue_instead_of_failing(tmp_path: Path) -> None:
    database = Database.from_settings(_settings(f"sqlite+aiosqlite:///{tmp_path}/gateway.db"))
    async with database.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE counter (n INTEGER NOT NULL)")
        await conn.exec_driver_sql("INSERT INTO counter VALUES (0)")

    async def increment() -> None:
        async with database.begin() as conn:
            n = (await conn.exec_driver_sql("SELECT n FROM counter")).scalar_one()
            await asyncio.sleep(0.01)
            await conn.exec_driver_sql("UPDATE counter SET n = ?", (n + 1,))

    await asyncio.gather(*(increment() for _ in range(5)))
    async with database.engine.connect() as conn:
        assert (await conn.exec_driver_sql("SELECT n FROM counter")).scalar_one() == 5
    await database.dispose()


async def test_storage_error_for_an_unreachable_server_never_contains_the_password() -> None:
    url = f"postgresql+asyncpg://channelgate:{PASSWORD}@127.0.0.1:1/channelgate"
    database = Database.from_settings(_settings(url))

    with pytest.raises(StorageError) as failed:
        await database.ping()
    await database.dispose()

    error = failed.value
    assert "127.0.0.1:1" in str(error)
    for text in (str(error), repr(error), error.detail or "", safe_url(database.engine)):
        assert PASSWORD not in text
    assert error.__cause__ is None


async def test_migrations_run_from_the_package_without_an_alembic_ini(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"

    assert await database_revision(url) is None
    await upgrade_to_head(url)

    assert await database_revision(url) == head_revision() == "0011"
    assert (MIGRATIONS / "env.py").is_file()
    assert not list(tmp_path.glob("*.ini"))
