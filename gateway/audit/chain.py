"""The sealer: chains every committed access record, signs checkpoints, delivers them to the sink.

Records are written by several paths (the request batcher, the deprovisioning pipeline's direct SQLite writer,
state changes in their own transactions) and, on PostgreSQL, by several replicas whose ``seq`` values commit out
of order. Computing the chain in each writer would serialise them all on one lock held until commit. Instead the
writers stay as they are and the sealer, on every replica, takes turns (``ChainStore.seal`` holds the chain lock)
to chain whatever committed since, in commit order. A record is unprotected only between its commit and the next
pass (``[audit] seal_interval_seconds``, 0.5 s by default); a crash in between loses nothing: the next pass seals it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime

from gateway.audit.checkpoints import CheckpointSigner, CheckpointSink
from gateway.audit.retention import Retention
from gateway.audit.settings import AuditSettings
from gateway.errors import ChannelgateError
from gateway.metrics import Metrics
from gateway.storage.audit_chain import ChainHead, ChainStore, CheckpointRow
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.audit")

#: Records chained per transaction: large enough that a sealing pass keeps up with ≥ 5,000 records/s, small
#: enough that the chain lock is held for milliseconds.
SEAL_BATCH = 5_000
#: Seconds between retention passes.
RETENTION_EVERY = 3600.0


class Sealer:
    def __init__(
        self,
        store: ChainStore,
        settings: AuditSettings,
        metrics: Metrics,
        signer: CheckpointSigner,
        sink: CheckpointSink | None,
        clock: Callable[[], datetime] = utcnow,
        retention: Retention | None = None,
    ) -> None:
        self.store = store
        self._settings = settings
        self._metrics = metrics
        self.signer = signer
        self._sink = sink
        self._clock = clock
        self.retention = retention
        #: Retention runs once a minute after start, then hourly (monotonic seconds).
        self._next_retention = time.monotonic() + 60
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: The first pass signs a checkpoint at once: a restart leaves a signed head behind before new records.
        self._last_checkpoint = time.monotonic() - settings.checkpoints.interval_seconds
        #: A checkpoint is waiting for the sink (checked at start, set when a delivery fails).
        self._undelivered = True

    async def seal_all(self) -> ChainHead:
        """Chain every record committed so far; return the head."""
        while True:
            count, head = await self.store.seal(SEAL_BATCH)
            self._metrics.audit_chain_head.set(head.chain_pos)
            if count < SEAL_BATCH:
                return head

    async def checkpoint(self, *, force: bool = False) -> CheckpointRow | None:
        """Sign the head (if it moved since the last checkpoint, or ``force``) and deliver what is pending."""
        if not self.signer.enabled:
            return None
        now = self._clock()
        row = await self.store.add_checkpoint(
            lambda number, head, previous: self.signer.sign(number, head, previous, now), force=force, at=now
        )
        self._last_checkpoint = time.monotonic()
        if row is not None:
            self._metrics.audit_checkpoints.labels("signed").inc()
        await self.deliver()
        return row

    async def deliver(self) -> int:
        """Write undelivered checkpoints to the sink, oldest first; stop at the first failure (order matters:
        each names its predecessor). Raises CheckpointSinkError when the sink refuses."""
        if self._sink is None:
            return 0
        delivered = 0
        self._undelivered = True
        for row in await self.store.undelivered():
            try:
                await self._sink.write(row.document)
            except ChannelgateError:
                self._metrics.audit_checkpoints.labels("sink_failed").inc()
                raise
            await self.store.mark_delivered(row.number, self._clock())
            self._metrics.audit_checkpoints.labels("delivered").inc()
            delivered += 1
        self._undelivered = False
        return delivered

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channelgate-audit-sealer")

    async def stop(self) -> None:
        """Stop the loop, then seal and checkpoint what is left (records flushed at shutdown included)."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await self.seal_all()
            await self.checkpoint()
        except ChannelgateError as exc:
            log.error("final seal of the access log failed (the next start seals it): %s", exc.message)
        finally:
            self.store.close()
            if self._sink is not None:
                await self._sink.aclose()

    async def _run(self) -> None:
        interval = self._settings.seal_interval_seconds
        delay = interval
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return
            try:
                if self.retention is not None and time.monotonic() >= self._next_retention:
                    self._next_retention = time.monotonic() + RETENTION_EVERY
                    counts = await self.retention.purge()
                    if counts.stubbed or counts.deleted:
                        log.info("retention: %d records emptied, %d deleted", counts.stubbed, counts.deleted)
                await self.seal_all()
                due = time.monotonic() - self._last_checkpoint >= self._settings.checkpoints.interval_seconds
                if due:
                    await self.checkpoint()
                elif self._undelivered:
                    await self.deliver()
                delay = interval
            except ChannelgateError as exc:
                self._metrics.audit_seal_failures.inc()
                # Full jitter, capped: replicas that failed together do not retry together.
                delay = random.uniform(interval, min(30.0, max(delay * 2, interval * 2)))  # noqa: S311 - not crypto
                log.error("sealing the access log failed, retrying in %.1f s: %s", delay, exc.message)
