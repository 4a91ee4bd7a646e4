"""``gateway.storage.quick_reads`` on real SQLite files and a real PostgreSQL server.

The quick reader trades the safety nets of the gateway's engine for speed (no thread on SQLite, no pre-ping on
PostgreSQL), so these tests pin down what it must still guarantee: it sees committed data, it cannot write, a
server restart costs no failed read, and an unreachable database is a ``StorageError`` (fail closed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.database import Database
from gateway.storage.quick_reads import QuickReads
from tests.components.postgres_server import PostgresServer


def _settings(url: str) -> DatabaseSettings:
    return DatabaseSettings.model_validate({"url": url, "connect_timeout_seconds": 2})


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Database, QuickReads]]:
    if request.param == "sqlite":
        settings = _settings(f"sqlite+aiosqlite:///{tmp_path / 'quick.db'}")
    else:
        settings = _settings(request.getfixturevalue("postgres_url"))
    database = Database.from_settings(settings)
    async with database.begin() as conn:
        await conn.execute(text("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"))
        await conn.execute(text("INSERT INTO kv VALUES ('a', 'one')"))
    reads = QuickReads.open(settings, database.engine)
    try:
        yield database, reads
    finally:
        await reads.dispose()
        await database.dispose()


def _value(key: str) -> Callable[[Connection], object]:
    def read(conn: Connection) -> object:
        return conn.execute(text("SELECT v FROM kv WHERE k = :k"), {"k": key}).scalar()

    return read


async def test_a_quick_read_sees_what_the_gateway_engine_committed(database: tuple[Database, QuickReads]) -> None:
    engine, reads = database
    assert await reads.run(_value("a")) == "one"
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE kv SET v = 'two' WHERE k = 'a'"))
    assert await reads.run(_value("a")) == "two"


async def test_sqlite_quick_reads_run_inline_and_postgres_ones_do_not(database: tuple[Database, QuickReads]) -> None:
    engine, reads = database
    assert reads.inline is (engine.dialect == "sqlite")


async def test_a_quick_read_cannot_write(database: tuple[Database, QuickReads]) -> None:
    engine, reads = database

    def write(conn: Connection) -> None:  # a bug in a caller, not something the gateway does
        conn.execute(text("INSERT INTO kv VALUES ('b', 'sneaked in')"))
        conn.commit()

    with pytest.raises(StorageError):
        await reads.run(write)
    assert await reads.run(_value("b")) is None
    async with engine.begin() as conn:  # the gateway's own engine still writes
        await conn.execute(text("INSERT INTO kv VALUES ('b', 'written')"))
    assert await reads.run(_value("b")) == "written"


async def test_a_postgres_restart_costs_no_failed_quick_read(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    settings = _settings(postgres_url)
    database = Database.from_settings(settings)
    async with database.begin() as conn:
        await conn.execute(text("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"))
        await conn.execute(text("INSERT INTO kv VALUES ('a', 'one')"))
    reads = QuickReads.open(settings, database.engine)
    try:
        assert await reads.run(_value("a")) == "one"  # the pool now holds a connection the restart will kill
        postgres_server.restart()
        assert await reads.run(_value("a")) == "one"
    finally:
        await reads.dispose()
        await database.dispose()


async def test_an_unreachable_postgres_is_a_storage_error_with_the_password_masked(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    settings = _settings(postgres_url.replace("postgres@", "postgres:s3cret-pw@"))
    database = Database.from_settings(settings)
    reads = QuickReads.open(settings, database.engine)
    postgres_server.stop()
    try:
        with pytest.raises(StorageError) as raised:
            await reads.run(_value("a"))
        assert "s3cret-pw" not in str(raised.value) and "s3cret-pw" not in repr(raised.value.__dict__)
    finally:
        postgres_server.start()
        await reads.dispose()
        await database.dispose()
