"""The access log's SQLite batch writer runs in a process of its own (gateway/storage/sqlite_batch_process.py):
a batch counts as written only once that process answered, a dead process is replaced, and a batch whose answer
was lost is neither lost nor written twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessRecord, insert_values
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from gateway.storage.sqlite_batch_process import BatchWriterProcess

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def _records(first: int, count: int) -> list[AccessRecord]:
    detail = {"via": "forward-auth"}
    return [
        AccessRecord(time=T0 + timedelta(microseconds=n), kind="request", request_id=f"r{n:08d}", agent_name="alice",
                     path="/chat/", status=200, decision="allow", detail={**detail, "n": n})
        for n in range(first, first + count)
    ]  # fmt: skip


def _rows(path: Path) -> list[tuple[str, int | None]]:
    with sqlite3.connect(path) as connection:
        return list(connection.execute("SELECT request_id, chain_pos FROM access_log ORDER BY seq"))


def _child(repository: AccessLogRepository) -> int:
    writer = repository._sqlite_batches
    assert isinstance(writer, BatchWriterProcess) and writer._holder
    return writer._holder[0].pid


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[tuple[AccessLogRepository, Path]]:
    path = tmp_path / "log.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_to_head(url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(url)))
    repository = AccessLogRepository(database.engine)
    try:
        yield repository, path
    finally:
        repository.close()
        await database.dispose()


async def test_a_batch_is_committed_and_chained_by_the_writer_process(log: tuple[AccessLogRepository, Path]) -> None:
    repository, path = log
    await repository.append_batch(_records(0, 300))  # more than one multi-row INSERT (128 rows each)
    rows = _rows(path)
    assert [request_id for request_id, _ in rows] == [f"r{n:08d}" for n in range(300)]
    assert [position for _, position in rows] == list(range(1, 301))
    assert _child(repository) != os.getpid()
    records = await repository.tail(1)
    assert records[0].detail == {"via": "forward-auth", "n": 299}
    assert records[0].time == T0 + timedelta(microseconds=299)


async def test_a_writer_process_killed_between_batches_is_replaced_without_an_error(
    log: tuple[AccessLogRepository, Path],
) -> None:
    repository, path = log
    await repository.append_batch(_records(0, 10))
    first = _child(repository)
    os.kill(first, signal.SIGKILL)
    await asyncio.sleep(0.1)
    await repository.append_batch(_records(10, 10))
    assert _child(repository) != first
    assert [position for _, position in _rows(path)] == list(range(1, 21))


async def test_a_writer_process_killed_during_a_batch_is_replaced_and_the_batch_written_exactly_once(
    log: tuple[AccessLogRepository, Path],
) -> None:
    repository, path = log
    await repository.append_batch(_records(0, 1))  # the child is running
    batch = _records(1, 60_000)  # ~1 s of work for the child: it dies inside the batch
    child = _child(repository)
    writing = asyncio.create_task(repository.append_batch(batch))
    await asyncio.sleep(0.3)
    os.kill(child, signal.SIGKILL)
    await writing  # settled with a new child (not committed: rolled back with the dead one), then written
    assert _child(repository) != child
    ids = [request_id for request_id, _ in _rows(path)]
    assert len(ids) == len(set(ids)) == 60_001


async def test_a_batch_that_kills_every_writer_process_is_a_storage_error_and_stays_with_the_caller(
    log: tuple[AccessLogRepository, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, path = log
    await repository.append_batch(_records(0, 1))
    # Each child started for the batch dies on its first frame (as a crash inside the write would).
    monkeypatch.setattr(sys, "executable", str(_dying_python(path.parent)))
    os.kill(_child(repository), signal.SIGKILL)
    await asyncio.sleep(0.1)
    with pytest.raises(StorageError):
        await repository.append_batch(_records(1, 5))
    monkeypatch.undo()
    await repository.append_batch(_records(1, 5))  # as gateway.audit.writer retries: written once
    assert [request_id for request_id, _ in _rows(path)] == [f"r{n:08d}" for n in range(6)]


def _dying_python(directory: Path) -> Path:
    script = directory / "dying-python"
    script.write_text("#!/bin/sh\nhead -c 1 >/dev/null\nexit 3\n")
    script.chmod(0o755)
    return script


async def test_a_batch_whose_answer_was_lost_after_it_committed_is_not_written_again(
    log: tuple[AccessLogRepository, Path],
) -> None:
    """The child committed, then died before its answer arrived: the retry asks a new child and skips it."""
    repository, path = log
    lost, later = _records(0, 50), _records(50, 5)
    await repository.append_batch(lost)
    writer = repository._sqlite_batches
    assert isinstance(writer, BatchWriterProcess)
    os.kill(_child(repository), signal.SIGKILL)
    # What write() records when the answer to ``lost`` never came (it did commit above).
    writer._unsure = (insert_values(lost[0]), insert_values(lost[-1]), len(lost))
    await repository.append_batch([*lost, *later])
    ids = [request_id for request_id, _ in _rows(path)]
    assert ids == [f"r{n:08d}" for n in range(55)]


async def test_a_database_error_in_the_writer_process_is_a_storage_error_and_nothing_is_written(
    log: tuple[AccessLogRepository, Path],
) -> None:
    repository, path = log
    await repository.append_batch(_records(0, 1))
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TRIGGER refuse BEFORE INSERT ON access_log BEGIN SELECT RAISE(ABORT, 'full'); END")
    with pytest.raises(StorageError, match="database write failed") as raised:
        await repository.append_batch(_records(1, 5))
    assert "full" in str(raised.value.detail)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER refuse")
    await repository.append_batch(_records(1, 5))  # the same child goes on
    assert len(_rows(path)) == 6


async def test_the_writer_process_ignores_ctrl_c_and_stops_with_the_repository(
    log: tuple[AccessLogRepository, Path],
) -> None:
    repository, _ = log
    await repository.append_batch(_records(0, 1))
    child = _child(repository)
    os.kill(child, signal.SIGINT)  # Ctrl-C reaches the whole process group; the gateway decides when it stops
    await repository.append_batch(_records(1, 1))
    assert _child(repository) == child
    repository.close()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
