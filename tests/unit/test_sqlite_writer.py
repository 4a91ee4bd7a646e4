"""The direct SQLite writer and reader (gateway/storage/sqlite_writer.py): concurrent units share one commit and
each caller gets its own answer; a unit that fails is rolled back alone; a group that cannot commit fails every
caller; a caller that gave up before its unit ran leaves nothing; what a caller was told is committed is read
back at once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StorageError
from gateway.storage.sqlite_batches import sqlite_datetime
from gateway.storage.sqlite_writer import SqliteReader, SqliteWriter, Unit, from_sqlite


class CountingWriter(SqliteWriter):
    commits = 0

    def _transaction(self, units: list[Unit[Any]]) -> list[tuple[bool, Any]]:
        self.commits += 1
        return super()._transaction(units)


@pytest.fixture
def path(tmp_path: Path) -> str:
    file = tmp_path / "gateway.db"
    with sqlite3.connect(file) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    return str(file)


def _rows(path: str) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT k, v FROM t"))


def _insert(key: str, value: int) -> Callable[[sqlite3.Connection], int]:
    def unit(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (key, value))
        return value * 10

    return unit


async def test_concurrent_units_commit_together_and_each_caller_gets_its_own_result(path: str) -> None:
    writer = CountingWriter(path, busy_timeout_seconds=1)
    try:
        results = await asyncio.gather(*(writer.run(_insert(f"k{n}", n)) for n in range(20)))
    finally:
        writer.close()
    assert results == [n * 10 for n in range(20)]
    assert _rows(path) == {f"k{n}": n for n in range(20)}
    assert writer.commits <= 2  # the first caller's unit alone, then everyone who queued meanwhile


async def test_a_failing_unit_is_rolled_back_alone_and_its_caller_gets_the_error(path: str) -> None:
    writer = SqliteWriter(path, busy_timeout_seconds=1)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES ('half', 1)")
        raise ValueError("a bug in the unit")

    try:
        results = await asyncio.gather(
            writer.run(_insert("a", 1)),
            writer.run(half_then_fail),
            writer.run(_insert("a", 2)),  # the primary key refuses it
            writer.run(_insert("b", 3)),
            return_exceptions=True,
        )
    finally:
        writer.close()
    assert results[0] == 10 and results[3] == 30
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], StorageError) and "IntegrityError" in str(results[2].detail)
    assert _rows(path) == {"a": 1, "b": 3}


async def test_a_group_that_cannot_commit_fails_every_caller(tmp_path: Path) -> None:
    writer = SqliteWriter(str(tmp_path), busy_timeout_seconds=1)  # a directory: no database opens there
    results = await asyncio.gather(
        writer.run(_insert("a", 1)),
        writer.run(_insert("b", 2)),
        return_exceptions=True,
    )
    assert all(isinstance(result, StorageError) for result in results)


async def test_a_caller_cancelled_before_its_unit_ran_leaves_no_effect(path: str) -> None:
    writer = SqliteWriter(path, busy_timeout_seconds=1)
    try:
        first = asyncio.ensure_future(writer.run(_insert("first", 1)))
        await asyncio.sleep(0)  # the first group is on its way to the thread
        gone = asyncio.ensure_future(writer.run(_insert("gone", 2)))
        await asyncio.sleep(0)
        gone.cancel()
        await first
        assert await writer.run(_insert("after", 3)) == 30
    finally:
        writer.close()
    assert _rows(path) == {"first": 1, "after": 3}


async def test_what_a_writer_committed_is_read_back_at_once(path: str) -> None:
    writer = SqliteWriter(path, busy_timeout_seconds=1)
    reader = SqliteReader(path, busy_timeout_seconds=1)
    try:
        for n in range(5):
            await writer.run(_insert(f"k{n}", n))
            count = await reader.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0])
            assert count == n + 1
    finally:
        writer.close()
        reader.close()


async def test_a_read_that_cannot_run_is_a_storage_error(path: str) -> None:
    reader = SqliteReader(path, busy_timeout_seconds=1)
    try:
        with pytest.raises(StorageError):
            await reader.run(lambda conn: conn.execute("SELECT * FROM missing").fetchall())
    finally:
        reader.close()


def test_timestamps_are_stored_as_the_engine_stores_them_and_read_back_aware() -> None:
    moment = datetime(2026, 12, 4, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert sqlite_datetime(moment) == "2026-12-04 12:00:00.000005"
    assert from_sqlite(sqlite_datetime(moment)) == moment.astimezone(UTC)
