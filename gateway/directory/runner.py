"""The sync inside the gateway: one replica at a time (a PostgreSQL advisory lock, or a file lock beside the
SQLite database), the change feed when the server offers one, incremental syncs on an interval and a full
reconciliation on a slower one.

When the directory cannot be reached the runner waits with exponential backoff and full jitter (capped at
``reconnect_max_seconds``) and changes nothing: an unreachable directory never disables anyone. The feed is
restarted after it drops; its refresh stage ending triggers an incremental sync covering the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from ldap3.core.exceptions import LDAPException

from gateway.directory.errors import DirectoryUnavailable
from gateway.directory.feed import ChangeFeed, FeedEnded, FeedEvent, FeedRefreshed
from gateway.directory.sync import DirectorySync
from gateway.errors import ChannelgateError
from gateway.storage.forwarders import AdvisoryLease, FileLease, Lease, ProcessLease
from gateway.storage.sqlite_batches import sqlite_file

log = logging.getLogger("channelgate.ldap")

#: How often a replica without the lease asks for it again, and how often approvals are looked for.
POLL_SECONDS = 2.0


def sync_lease(sync: DirectorySync) -> Lease:
    engine = sync.store.engine
    name = f"ldap-sync:{sync.store.directory}"
    if engine.dialect.name == "postgresql":
        return AdvisoryLease(engine, name)
    path = sqlite_file(engine.url)
    return FileLease(f"{path}.{name.replace(':', '-')}.lock") if path is not None else ProcessLease()


class DirectoryRunner:
    def __init__(self, sync: DirectorySync, lease: Lease | None = None) -> None:
        self.sync = sync
        self.settings = sync.settings
        self._lease = lease or sync_lease(sync)
        self._feed: ChangeFeed | None = None
        self._events: asyncio.Queue[FeedEvent] = asyncio.Queue()
        self._feed_unsupported = False
        self._next_full = 0.0
        self._next_incremental = 0.0
        self._next_approval_check = 0.0

    async def run_forever(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    if not await self._lease.hold():
                        await self._stop_feed("off")
                        await asyncio.sleep(POLL_SECONDS)
                        continue
                    await self._step()
                    failures = 0
                except (DirectoryUnavailable, LDAPException, OSError) as exc:
                    message = exc.message if isinstance(exc, ChannelgateError) else type(exc).__name__
                    log.warning("directory %s unavailable (nobody is changed): %s", self.sync.store.directory, message)
                    failures += 1
                    await self._failed(message, failures)
                except ChannelgateError as exc:
                    log.error("directory sync %s failed: %s", self.sync.store.directory, exc.message)
                    failures += 1
                    await self._failed(exc.message, failures)
                except Exception as exc:  # the sync must outlive any one failure; the type only, no data
                    message = f"unexpected {type(exc).__name__}"
                    log.error("directory sync %s failed: %s", self.sync.store.directory, message)
                    failures += 1
                    await self._failed(message, failures)
        finally:
            await self._stop_feed("off")
            await self._lease.release()

    async def _failed(self, message: str, failures: int) -> None:
        """Stop the feed (the database or the lease may be what failed: a replica that lost the lease must not go
        on applying changes beside the one that took it), record the error, wait before the next attempt."""
        await self._stop_feed("down")
        await self._note_error(message)
        await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.settings.reconnect_max_seconds, 0.5 * 2 ** min(failures, 16))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret

    async def _note_error(self, message: str) -> None:
        with contextlib.suppress(ChannelgateError):
            await self.sync.store.save_state(self.sync.clock(), last_error=message[:1000])

    async def _step(self) -> None:
        now = time.monotonic()
        if now >= self._next_approval_check:
            self._next_approval_check = now + POLL_SECONDS
            if await self.sync.store.quarantines(states=("approved",)):
                self._next_full = 0.0
        if now >= self._next_full:
            await self.sync.full()
            self._next_full = time.monotonic() + self.settings.full_interval_seconds
            self._next_incremental = time.monotonic() + self.settings.incremental_interval_seconds
            self._feed_unsupported = False
        elif now >= self._next_incremental:
            await self.sync.incremental()
            self._next_incremental = time.monotonic() + self.settings.incremental_interval_seconds
        await self._ensure_feed()
        await self._consume(until=min(self._next_full, self._next_incremental, self._next_approval_check))

    async def _ensure_feed(self) -> None:
        if self.settings.change_feed == "off" or self._feed_unsupported:
            return
        if self._feed is not None and self._feed.alive:
            return
        await self._stop_feed("connecting")
        feed = ChangeFeed(self.settings, await self.sync.password(), self._events)
        try:
            await asyncio.to_thread(feed.start)
        except LDAPException as exc:
            # unavailableCriticalExtension and the like: this server offers no RFC 4533 feed; poll instead.
            self._feed_unsupported = True
            log.warning("directory %s offers no sync feed (%s); incremental syncs only", self.settings.url, exc)
            await self._feed_state("unsupported")
            return
        self._feed = feed
        await self._feed_state("connecting")

    async def _consume(self, until: float) -> None:
        """Apply what the feed pushes, in small batches, until ``until`` (a monotonic time)."""
        while (remaining := until - time.monotonic()) > 0:
            if self._feed is not None and not self._feed.alive:
                await self._stop_feed("down")
                raise DirectoryUnavailable("the directory's change feed connection dropped")
            try:
                first = await asyncio.wait_for(self._events.get(), timeout=min(remaining, 0.5))
            except TimeoutError:
                continue
            batch = [first]
            if self.settings.feed_batch_seconds:
                await asyncio.sleep(self.settings.feed_batch_seconds)
            while not self._events.empty():
                batch.append(self._events.get_nowait())
            await self._handle(batch)

    async def _handle(self, batch: list[FeedEvent]) -> None:
        ended = next((e for e in batch if isinstance(e, FeedEnded)), None)
        changes = [e for e in batch if not isinstance(e, (FeedEnded, FeedRefreshed))]
        if any(isinstance(e, FeedRefreshed) for e in batch):
            await self._feed_state("live")
            await self.sync.incremental(gone=())
        if changes:
            await self.sync.feed_batch(changes)
            await self.sync.store.save_state(self.sync.clock(), feed_event_at=self.sync.clock())
        if ended is not None and ended.refused_by_limits:
            self._feed_unsupported = True  # until the next full sync: retrying would meet the same limit
            log.error(
                "directory %s ended the change feed (%s): lift the size and time limits of %s for it "
                "(OpenLDAP: olcLimits dn.exact=... size=unlimited time=unlimited); incremental syncs only until then",
                self.settings.url,
                ended.result,
                self.settings.bind_dn,
            )
            await self._stop_feed("refused")
        elif ended is not None:
            await self._stop_feed("down")
            raise DirectoryUnavailable(f"the change feed ended: {ended.reason}")

    async def _feed_state(self, state: str) -> None:
        if self.sync.metrics is not None:
            self.sync.metrics.feed_up.set(1 if state == "live" else 0)
        await self.sync.store.save_state(self.sync.clock(), feed_state=state)

    async def _stop_feed(self, state: str) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            await asyncio.to_thread(feed.stop)
        while not self._events.empty():
            self._events.get_nowait()
        if feed is not None or state == "connecting":
            with contextlib.suppress(ChannelgateError):
                await self._feed_state(state)
