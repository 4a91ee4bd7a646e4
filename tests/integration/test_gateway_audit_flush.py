"""The access-log writer on a real SQLite file: flushes that overlap write every record exactly once.

An explicit ``flush()`` (shutdown, tests, the CLI) can run while the background writer flushes; both used to
take the same head of the queue, write it twice and then pop more than was queued (IndexError).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.audit.writer import AuditLog
from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessRecord
from gateway.storage.database import create_engine
from gateway.storage.migrate import upgrade_to_head
from gateway.timeutil import utcnow


async def test_overlapping_flushes_write_every_record_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await upgrade_to_head(url)
    engine = create_engine(DatabaseSettings.model_validate({"url": url}))
    repository = AccessLogRepository(engine)
    audit = AuditLog(repository, batch_size=7, flush_interval=0.001)
    audit.start()
    try:
        for round_ in range(5):
            for i in range(40):
                audit.submit(AccessRecord(time=utcnow(), kind="request", request_id=f"r{round_}-{i}"))
            await asyncio.gather(audit.flush(), audit.flush(), audit.flush())
        await audit.stop()
        records = await repository.tail(1000)
    finally:
        await engine.dispose()
    ids = [record.request_id for record in records]
    assert len(ids) == 200
    assert len(set(ids)) == 200
    assert audit.pending == 0


async def test_a_refused_batch_keeps_its_records_until_the_database_takes_them(tmp_path: Path) -> None:
    """On SQLite batches bypass SQLAlchemy (``gateway.storage.sqlite_batches``): a refused batch must still be
    all-or-nothing, reported, and retried, never dropped."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await upgrade_to_head(url)
    engine = create_engine(DatabaseSettings.model_validate({"url": url}))
    repository = AccessLogRepository(engine)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON access_log WHEN NEW.request_id = 'r-5' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    audit = AuditLog(repository, batch_size=50, flush_interval=0.01)
    try:
        for i in range(10):
            audit.submit(AccessRecord(time=utcnow(), kind="request", request_id=f"r-{i}"))
        with pytest.raises(StorageError) as refused:
            await audit.flush()
        assert "disk full" in (refused.value.detail or "")
        assert audit.pending == 10
        assert await repository.tail(100) == []  # nothing of the refused batch was committed
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER refuse")
        await audit.flush()
        assert [record.request_id for record in await repository.tail(100)] == [f"r-{i}" for i in range(10)]
        assert audit.pending == 0
    finally:
        repository.close()
        await engine.dispose()
