"""Continuous forwarding of the access log to SIEMs (``[[audit.forwarders]]``), at least once and in chain order.

Each forwarder follows the sealed records (``chain_pos`` after its cursor), sends one bounded batch, waits for
the transport to confirm it (``gateway/audit/transports.py``), and only then advances its cursor in the database.
A failure is retried with capped exponential backoff and full jitter; the cursor never passes a record that was
not delivered, so a receiver that was down gets everything it missed, possibly twice (at least once), never a
gap. One batch is in flight at a time: a slow receiver slows the forwarder, and memory stays bounded by
``batch_size``. Unsealed records wait for the sealer; with several replicas one holds each forwarder's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.formats import Formatter, formatter
from gateway.audit.settings import AuditSettings, ForwarderSettings
from gateway.audit.transports import ForwardingFailed, Transport, transport_for
from gateway.deprovision.backoff import retry_delay
from gateway.errors import ChannelgateError
from gateway.storage.access_log import AccessRecord
from gateway.storage.forwarders import ForwarderStore, Lease

log = logging.getLogger("channelgate.audit")

RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 60.0
#: How long a replica without the lease waits before asking again.
LEASE_RETRY_SECONDS = 5.0
#: How long ``stop`` goes on delivering what is sealed before it gives up (the cursor keeps the rest).
STOP_FLUSH_SECONDS = 5.0


class ForwarderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.forwarded = Counter(
            "channelgate_audit_forwarded", "Access records delivered to a SIEM", ["forwarder"], registry=registry
        )
        self.lag = Gauge(
            "channelgate_audit_forward_lag",
            "Sealed access records not yet delivered to a SIEM (chain head - cursor)",
            ["forwarder"],
            registry=registry,
        )
        self.failures = Counter(
            "channelgate_audit_forward_failures",
            "Failed deliveries to a SIEM (each is retried; alert on a steady rise)",
            ["forwarder"],
            registry=registry,
        )


#: One set of series per registry (a registry refuses a second metric of the same name).
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ForwarderMetrics] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Timing:
    poll_seconds: float = 1.0
    retry_base_seconds: float = RETRY_BASE_SECONDS
    retry_cap_seconds: float = RETRY_CAP_SECONDS
    lease_retry_seconds: float = LEASE_RETRY_SECONDS


class GapInChain(ForwardingFailed):
    code = "siem_forwarding_gap"


def deliverable(records: Sequence[AccessRecord], cursor: int, purged_through: int) -> list[AccessRecord]:
    """The records that follow ``cursor`` without a gap, in chain order (pure).

    A gap at the start is allowed only where retention deleted the records outright (``purged_through``); any
    other gap raises, so the forwarder waits rather than skip a record it has not seen."""
    if not records:
        return []
    expected = cursor + 1
    first = records[0].chain_pos
    assert first is not None
    if first != expected:
        if not (cursor < purged_through and first == purged_through + 1):
            raise GapInChain(f"chain positions {expected}..{first - 1} are missing; waiting rather than skip them")
        log.warning("records %d..%d were purged before they were forwarded", expected, first - 1)
        expected = first
    run: list[AccessRecord] = []
    for record in records:
        if record.chain_pos != expected:
            break
        run.append(record)
        expected += 1
    return run


class Forwarder:
    def __init__(
        self,
        settings: ForwarderSettings,
        store: ForwarderStore,
        formatter: Formatter,
        transport: Transport,
        metrics: ForwarderMetrics,
        timing: Timing = Timing(),
    ) -> None:
        self.name = settings.name
        self._batch_size = settings.batch_size
        self._store = store
        self._formatter = formatter
        self._transport = transport
        self._metrics = metrics
        self._timing = timing
        self._lease: Lease = store.lease(settings.name)
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def forward_once(self) -> int:
        """Deliver the next batch and advance the cursor; return how many records were delivered."""
        cursor = await self._store.cursor(self.name)
        records = deliverable(
            await self._store.sealed_after(cursor, self._batch_size), cursor, await self._store.purged_through()
        )
        if records:
            await self._transport.send([self._formatter.format(record) for record in records])
            position = records[-1].chain_pos
            assert position is not None
            await self._store.advance(self.name, position)
            self._metrics.forwarded.labels(self.name).inc(len(records))
            cursor = position
        self._metrics.lag.labels(self.name).set(max(0, await self._store.head() - cursor))
        return len(records)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"channelgate-forwarder-{self.name}")

    async def stop(self, flush_seconds: float = STOP_FLUSH_SECONDS) -> None:
        """Deliver what is sealed (for at most ``flush_seconds``), then close. The cursor is in the database after
        every batch, so whatever is left is sent by the next start."""
        self._stopping.set()
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, flush_seconds)
            except TimeoutError:
                log.warning("forwarder %s stopped with records still to deliver (sent on the next start)", self.name)
            self._task = None
        await self._transport.close()
        await self._lease.release()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if not await self._lease.hold():
                    # Another replica forwards: only the holder reports the lag, so no stale value lingers here.
                    with contextlib.suppress(KeyError):
                        self._metrics.lag.remove(self.name)
                    if self._stopping.is_set():
                        return
                    await self._pause(self._timing.lease_retry_seconds)
                    continue
                delivered = await self.forward_once()
                failures = 0
                if delivered < self._batch_size:
                    if self._stopping.is_set():
                        return
                    await self._pause(self._timing.poll_seconds)
            except Exception as exc:  # anything: a forwarder that dies quietly would stop the SIEM's feed
                # Our errors say what to do and carry no secret; anything else is named by type only.
                message = exc.message if isinstance(exc, ChannelgateError) else f"unexpected {type(exc).__name__}"
                failures += 1
                self._metrics.failures.labels(self.name).inc()
                await self._transport.close()
                if self._stopping.is_set():
                    log.error("forwarder %s: %s (stopping; the next start resends)", self.name, message)
                    return
                delay = retry_delay(failures, self._timing.retry_base_seconds, self._timing.retry_cap_seconds)
                log.error("forwarder %s: %s (attempt %d, retry in %.1f s)", self.name, message, failures, delay)
                await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless stopped: a stop ends the pause (and every later one) so the final flush starts now."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()
        if self._stopping.is_set():
            self._wakeup.set()


class Forwarders:
    """Every configured forwarder of this replica, started and stopped with the gateway."""

    def __init__(self, forwarders: Sequence[Forwarder]) -> None:
        self.forwarders = tuple(forwarders)

    @classmethod
    def build(
        cls,
        settings: Sequence[ForwarderSettings],
        store: ForwarderStore,
        registry: CollectorRegistry,
        *,
        syslog_enterprise_number: int,
        timing: Timing = Timing(),
    ) -> Forwarders:
        metrics = _METRICS.get(registry)
        if metrics is None:
            metrics = _METRICS[registry] = ForwarderMetrics(registry)
        built = []
        for item in settings:
            chosen = formatter(item.format, syslog_enterprise_number=syslog_enterprise_number)
            built.append(Forwarder(item, store, chosen, transport_for(item, chosen.media_type), metrics, timing))
        return cls(built)

    def start(self) -> None:
        for forwarder in self.forwarders:
            forwarder.start()

    async def stop(self) -> None:
        await asyncio.gather(*(forwarder.stop() for forwarder in self.forwarders))


def start_forwarders(settings: AuditSettings, engine: AsyncEngine, registry: CollectorRegistry) -> Forwarders:
    """Build and start this replica's forwarders (the gateway's lifespan stops them)."""
    forwarders = Forwarders.build(
        settings.forwarders,
        ForwarderStore(engine),
        registry,
        syslog_enterprise_number=settings.syslog_enterprise_number,
        timing=Timing(poll_seconds=max(settings.seal_interval_seconds, 0.2)),
    )
    forwarders.start()
    return forwarders
