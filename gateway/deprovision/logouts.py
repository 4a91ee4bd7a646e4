"""Logouts remembered in the database, so a session a restarted Redis brings back can be ended again.

Redis can lose a write it acknowledged (gateway/deprovision/revived.py says how). A lost revocation of an agent made
inactive is found again from the agent's row; a lost logout of an agent who stays active is not: the browser dropped
its cookie, but a copy of it (another tab's, a proxy's log, a thief's) would work again until the session's
timeouts. So each logout — ``/.channelgate/logout``, a back-channel logout, a CAEP session revocation, the console's
"end sessions", a login that replaces the browser's session — is written to ``session_ends``
(gateway/storage/session_ends.py) once the store has ended the sessions and before the logout is reported done; the
sweep after an outage reads what ended within the longest a session can live and ends it again.

Order and failure, as a revocation's record (gateway/deprovision/kill.py): the sessions are ended in the store
first, whatever the database does, then remembered. When that write fails the logout is not reported done (the
``StorageError`` reaches the caller: 503, and an IdP sends its logout token again), and what was ended is kept in
this process and written first at the sweep task's next turn (:meth:`Logouts.flush`). A process that dies in
between, while Redis also loses the logout, loses it: two failures at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.audit.writer import AuditLog
from gateway.errors import ChannelgateError
from gateway.storage.access_log import AccessRecord
from gateway.storage.database import Database
from gateway.storage.session_ends import EndKind, SessionEnd, SessionEndRepository

log = logging.getLogger("channelgate.sessions")

#: How often expired rows are deleted (seconds): rows older than the longest session lifetime are useless.
PRUNE_INTERVAL_SECONDS = 3600.0
#: Unwritten logouts kept while the database is unreachable; beyond it the oldest are dropped (and logged).
MAX_UNWRITTEN = 10_000


class Logouts:
    """Writes each logout's ends (with the logout's access-log records) before it is reported done."""

    def __init__(
        self,
        database: Database,
        ends: SessionEndRepository,
        audit: AuditLog,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._ends = ends
        self._audit = audit
        self._monotonic = monotonic
        self._pruned_at: float | None = None
        #: Logouts whose write failed, oldest first: written before anything else at the next turn.
        self._unwritten: list[tuple[list[SessionEnd], list[AccessRecord]]] = []

    async def remember(self, ends: Sequence[SessionEnd], records: Sequence[AccessRecord] = ()) -> None:
        """Write ``ends`` and ``records`` in one transaction. Call it once the store has ended the sessions; when
        the write fails both are kept for :meth:`flush` and the ``ChannelgateError`` is raised."""
        try:
            await self._write(list(ends), list(records))
        except ChannelgateError:
            self._unwritten.append((list(ends), list(records)))
            if len(self._unwritten) > MAX_UNWRITTEN:
                dropped, _ = self._unwritten.pop(0)
                log.error("dropped %d unwritten logout(s): the database has been unreachable too long", len(dropped))
            raise

    async def flush(self) -> None:
        """Write what :meth:`remember` could not, oldest first; raises (keeping the rest) if the database still
        fails."""
        while self._unwritten:
            ends, records = self._unwritten[0]
            await self._write(ends, records)
            self._unwritten.pop(0)

    async def ended_idp_session(self, sid: str, since: datetime, agent_id: str | None = None) -> bool:
        """Whether the IdP session ``sid`` (of ``agent_id`` when given) was ended at or after ``since``: saved, or
        kept in process to be (a provider resending a logout token after a 503 is answered as done)."""
        for ends, _ in self._unwritten:
            for end in ends:
                of_agent = agent_id is None or end.agent_id == agent_id
                if end.kind is EndKind.IDP_SESSION and end.sid == sid and end.ended_at >= since and of_agent:
                    return True
        return await self._ends.ended_idp_session(sid, since, agent_id)

    async def since(self, cutoff: datetime) -> list[SessionEnd]:
        """The logouts remembered at or after ``cutoff``, oldest first."""
        return await self._ends.since(cutoff)

    async def prune_if_due(self, before: datetime) -> None:
        """Delete the rows older than ``before``, at most once per ``PRUNE_INTERVAL_SECONDS``."""
        now = self._monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_INTERVAL_SECONDS:
            return
        pruned = await self._ends.prune(before)
        self._pruned_at = now
        if pruned:
            log.debug("forgot %d logout(s) older than the longest session lifetime", pruned)

    async def _write(self, ends: list[SessionEnd], records: list[AccessRecord]) -> None:
        async with self._database.begin() as conn:
            await self._ends.add(ends, conn=conn)
            if records:
                await self._audit.write(*records, conn=conn)
