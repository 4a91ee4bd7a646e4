"""Acknowledgements of this replica's revocation broadcasts: one reader for every call that waits for them.

Every replica that applied a revocation acknowledges it by pushing ``"<revocation id> <its replica id>"`` onto the
list of the replica that broadcast it (``ACKS_TO_PREFIX`` + origin replica, ``ACK_SCRIPT``). Before, each waiting call
blocked on a list of its own revocation: in a storm of a hundred deprovisionings that was fifty blocking Redis
connections a replica, each answer read on its own turn of the event loop that also applies the broadcasts and
closes the revoked agents' WebSockets (docs/benchmarks.md §9). Here one reader blocks on the replica's list, takes
whatever else is queued there in the same round trip, and hands each acknowledgement to the calls waiting for that
revocation.

Acknowledgements that arrive before their waiter (the broadcast is answered while the call still does other work)
are kept for ``keep_seconds``, so a wait that starts late, or a second wait on the same revocation, still sees
them. The reader runs while someone waits; what arrives in between stays in the Redis list (its TTL is renewed by
every push) for the next reader. A failed read fails every waiter of that moment (``SessionStoreUnavailable``,
fail closed); the next wait starts a new reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

#: Acknowledgements taken per round trip after the blocking pop returned one (a storm queues ~100 at once).
DRAIN = 500


@dataclass(slots=True)
class _Revocation:
    """What arrived for one revocation, and who waits for it."""

    created: float
    acked: set[str] = field(default_factory=set)
    waiters: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None


class AckCollector:
    """Reads one replica's acknowledgement list and wakes the calls waiting for each revocation."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        slice_seconds: float,
        keep_seconds: float,
        call: Callable[[Awaitable[Any]], Awaitable[Any]],
    ) -> None:
        """``slice_seconds`` bounds each blocking read (well under the socket timeout: its reply is read by a busy
        event loop); ``call`` turns Redis errors into the store's ``SessionStoreUnavailable``."""
        self._redis = redis
        self._key = key
        self._slice = slice_seconds
        self._keep = keep_seconds
        self._call = call
        #: Revocation id → its acknowledgements, oldest first (pruned from the front).
        self._revocations: dict[str, _Revocation] = {}
        self._reader: asyncio.Task[None] | None = None
        self._waiting = 0

    async def wait(self, revocation_id: str, expected: set[str], timeout: float) -> set[str]:  # noqa: ASYNC109
        """The replicas that acknowledged ``revocation_id``, once every one of ``expected`` did or ``timeout``
        passed; raises what a failed read raised."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        entry = self._entry(revocation_id)
        entry.waiters += 1
        entry.failure = None
        self._waiting += 1
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="channelgate-revocation-acks")
        try:
            while not expected <= entry.acked:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                entry.changed.clear()
                try:
                    await asyncio.wait_for(entry.changed.wait(), remaining)
                except TimeoutError:
                    break
                if entry.failure is not None:
                    raise entry.failure
            return set(entry.acked)
        finally:
            entry.waiters -= 1
            self._waiting -= 1

    def _entry(self, revocation_id: str) -> _Revocation:
        entry = self._revocations.get(revocation_id)
        if entry is None:
            entry = self._revocations[revocation_id] = _Revocation(time.monotonic())
        return entry

    async def _read(self) -> None:
        try:
            while self._waiting:
                item = await self._call(self._redis.blpop([self._key], timeout=self._slice))
                if item is None:
                    continue
                items = [item[1]]
                more = await self._call(self._redis.lpop(self._key, DRAIN))
                items += more or []
                self._received(items)
        except Exception as exc:  # every waiter of this moment fails with it; the next wait reads again
            for entry in self._revocations.values():
                if entry.waiters:
                    entry.failure = exc
                    entry.changed.set()

    def _received(self, items: list[str]) -> None:
        for item in items:
            revocation_id, _, replica = str(item).partition(" ")
            if not replica:
                continue  # not ours to parse; nothing waits for it
            entry = self._entry(revocation_id)
            entry.acked.add(replica)
            entry.changed.set()
        self._prune()

    def _prune(self) -> None:
        """Forget revocations older than ``keep_seconds`` that nobody waits for (the oldest come first)."""
        horizon = time.monotonic() - self._keep
        for revocation_id, entry in list(self._revocations.items()):
            if entry.created > horizon:
                break
            if not entry.waiters:
                del self._revocations[revocation_id]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
