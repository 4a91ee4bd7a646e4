"""A batch of request records whose COMMIT reached PostgreSQL but whose answer was lost is not written twice.

The writer keeps a batch whose write failed and sends it again (nothing lost). When the connection drops after
COMMIT was sent, the batch may have committed all the same; before sending it again the repository asks whether
its first and last records are there. A fault proxy between the gateway and a real PostgreSQL forwards the COMMIT
and cuts the connection before PostgreSQL's answer gets back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.writer import AuditLog
from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessRecord
from gateway.storage.database import create_engine
from gateway.storage.migrate import upgrade_to_head
from gateway.timeutil import utcnow
from tests.components.fault_proxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@dataclass
class Behind:
    """The access log written through the fault proxy, read around it."""

    proxy: FaultProxy
    audit: AuditLog
    direct: AsyncEngine

    async def request_ids(self) -> list[str]:
        async with self.direct.connect() as connection:
            rows = await connection.execute(text("SELECT request_id FROM access_log ORDER BY seq"))
            return [row[0] for row in rows]

    def submit(self, *request_ids: str) -> None:
        for request_id in request_ids:
            self.audit.submit(AccessRecord(time=utcnow(), kind="request", request_id=request_id, status=200))


def _engine(url: str) -> AsyncEngine:
    return create_engine(DatabaseSettings.model_validate({"url": url}))


@pytest.fixture
async def behind(postgres_url: str) -> AsyncIterator[Behind]:
    await upgrade_to_head(postgres_url)
    database = make_url(postgres_url)
    assert database.port is not None
    async with FaultProxy(target_port=database.port) as proxy:
        proxied = _engine(database.set(port=proxy.port).render_as_string(hide_password=False))
        direct = _engine(postgres_url)
        try:
            # flush() is called by the test alone: no background writer racing it.
            yield Behind(proxy, AuditLog(AccessLogRepository(proxied)), direct)
        finally:
            await proxied.dispose()
            await direct.dispose()


async def test_a_batch_committed_before_its_answer_was_lost_is_not_written_again(behind: Behind) -> None:
    behind.submit(*(f"r-{i}" for i in range(10)))
    behind.proxy.cut_after = b"COMMIT"
    with pytest.raises(StorageError):
        await behind.audit.flush()
    assert behind.proxy.counts.cuts == 1
    assert await behind.request_ids() == [f"r-{i}" for i in range(10)], "the fault: committed, answer lost"
    assert behind.audit.pending == 10, "kept: the writer cannot know"

    behind.submit("r-10", "r-11")
    await behind.audit.flush()

    assert await behind.request_ids() == [f"r-{i}" for i in range(12)]
    assert behind.audit.pending == 0


async def test_a_batch_lost_before_its_commit_is_written_on_the_next_flush(behind: Behind) -> None:
    behind.submit(*(f"r-{i}" for i in range(10)))
    behind.proxy.cut_after = b"INSERT INTO access_log"
    with pytest.raises(StorageError):
        await behind.audit.flush()
    assert behind.proxy.counts.cuts == 1
    assert await behind.request_ids() == [], "the fault: rolled back"

    behind.submit("r-10")
    await behind.audit.flush()

    assert await behind.request_ids() == [f"r-{i}" for i in range(11)]
    assert behind.audit.pending == 0


async def test_when_the_question_cannot_be_asked_the_batch_waits_and_is_still_written_once(behind: Behind) -> None:
    behind.submit(*(f"r-{i}" for i in range(5)))
    behind.proxy.cut_after = b"COMMIT"
    with pytest.raises(StorageError):
        await behind.audit.flush()
    await behind.proxy.set_mode("refuse")
    with pytest.raises(StorageError):
        await behind.audit.flush()  # the database cannot be asked whether the batch committed
    assert behind.audit.pending == 5

    await behind.proxy.clear()
    await behind.audit.flush()

    assert await behind.request_ids() == [f"r-{i}" for i in range(5)]
    assert behind.audit.pending == 0
