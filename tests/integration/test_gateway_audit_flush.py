"""The access-log writer on a real SQLite file: flushes that overlap write every record exactly once.

An explicit ``flush()`` (shutdown, tests, the CLI) can run while the background writer flushes; both used to
take the same head of the queue, write it twice and then pop more than was queued (IndexError).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.audit.writer import AuditLog
from gateway.metrics import Metrics
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
    audit = AuditLog(repository, Metrics(), batch_size=7, flush_interval=0.001)
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
