"""Writing the access log without losing records.

Events that change state (login, logout, deprovision) are written at once, in the caller's transaction when
it has one, and the action fails if its record cannot be written (strict mode, as Teleport's RFD 68: no action
without a record). Proxied-request records are queued and committed in batches every few milliseconds so the
hot path does not wait on the database; when the database is down the queue keeps them and retries, and when
the queue is full the gateway refuses new requests (503) rather than serve unrecorded traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.errors import ChannelgateError
from gateway.storage.access_log import AccessLogRepository, AccessRecord, LogRow, insert_values

log = logging.getLogger("channelgate.audit")


class AuditBacklogFull(ChannelgateError):
    """Too many access-log records are waiting for the database: refuse traffic instead of losing records."""

    status = 503
    code = "audit_backlog_full"


class AuditLog:
    def __init__(
        self,
        repository: AccessLogRepository,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.02,
        max_pending: int = 100_000,
    ) -> None:
        self._repository = repository
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        #: Queued as rows (``LogRow``), as the batch writer takes them.
        self._pending: deque[LogRow] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: One flush at a time: two would both write the head of the queue (duplicate records), then over-pop it.
        self._flushing = asyncio.Lock()

    @property
    def repository(self) -> AccessLogRepository:
        return self._repository

    async def write(self, *records: AccessRecord, conn: AsyncConnection | None = None) -> None:
        """Write now (strict): raises StorageError if the records cannot be committed."""
        await self._repository.append(list(records), conn=conn)

    def submit(self, record: AccessRecord) -> None:
        """Queue a request record for the next batch."""
        self.submit_row(insert_values(record))

    def submit_row(self, row: LogRow) -> None:
        """Queue a request record, given as its row, for the next batch."""
        if len(self._pending) >= self._max_pending:
            raise AuditBacklogFull("The access log cannot keep up (is the database down?); requests are paused.")
        self._pending.append(row)  # the queue gauge is read when /metrics is scraped (gateway/ops.py)
        if len(self._pending) >= self._batch_size:
            self._wakeup.set()

    def check_capacity(self) -> None:
        """Refuse a request before serving it when its record could not be queued afterwards."""
        if len(self._pending) >= self._max_pending:
            raise AuditBacklogFull("The access log cannot keep up (is the database down?); requests are paused.")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channelgate-audit-writer")

    async def stop(self) -> None:
        """Flush everything still queued, then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._repository.close()

    async def flush(self) -> None:
        async with self._flushing:
            while self._pending:
                batch = list(itertools.islice(self._pending, self._batch_size))
                await self._repository.append_rows(batch)
                for _ in batch:
                    self._pending.popleft()

    async def _run(self) -> None:
        backoff = self._flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            try:
                await self.flush()
                backoff = self._flush_interval
            except ChannelgateError as exc:
                backoff = min(max(backoff * 2, 0.1), 5.0)
                log.error("access log write failed, %d records kept for retry: %s", len(self._pending), exc.message)
                if self._stopping:
                    log.critical("stopping with %d access-log records unwritten", len(self._pending))
                    return
                continue
            if self._stopping:
                return
