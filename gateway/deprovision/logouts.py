"""Logouts remembered in the database, so a session a restarted Redis brings back can be ended again.

Redis can lose a write it acknowledged (gateway/deprovision/revived.py says how). A lost revocation of an agent made
inactive is found again from the agent's row; a lost logout of an agent who stays active is not: the browser dropped
its cookie, but a copy of it (another tab's, a proxy's log, a thief's) would work again until the session's
timeouts. So each logout — ``/.channelgate/logout``, a back-channel logout, a CAEP session revocation, the console's
"end sessions", a login that replaces the browser's session — and each deprovisioning's kill (its agent may be
enabled again before Redis loses the kill) is written to ``session_ends``
(gateway/storage/session_ends.py) once the store has ended the sessions and before the logout is reported done; the
sweep after an outage (and at start) reads what ended within the last idle timeout and ends it again.

Order and failure, as a revocation's record (gateway/deprovision/kill.py): the sessions are ended in the store
first, whatever the database does, then remembered. When that write fails the logout is not reported done (the
``StorageError`` reaches the caller: 503, and an IdP sends its logout token again), and what was ended is kept in
this process, replayed by the sweep, and written after it at the next turn (:meth:`Logouts.flush`). A process that
dies in between, while Redis also loses the logout, loses it: two failures at once. At shutdown what is still kept
is written once more (``Services.close``), and the count logged if that fails too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


#: Turns at which an unwritten entry failed while a later one was written, before it is dropped (logged).
MAX_FLUSH_FAILURES = 3


@dataclass(slots=True)
class _Unwritten:
    ends: list[SessionEnd]
    records: list[AccessRecord]
    #: Turns at which this entry's write failed while a later entry's succeeded.
    failures: int = 0


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
        #: Logouts whose write failed, oldest first: written at the sweep task's next turn (and at shutdown).
        self._unwritten: list[_Unwritten] = []

    @property
    def unwritten(self) -> int:
        """How many ends are kept in process, not yet written."""
        return sum(len(entry.ends) for entry in self._unwritten)

    async def remember(self, ends: Sequence[SessionEnd], records: Sequence[AccessRecord] = ()) -> None:
        """Write ``ends`` and ``records`` in one transaction. Call it once the store has ended the sessions; when
        the write fails both are kept for :meth:`flush` and the ``ChannelgateError`` is raised."""
        try:
            await self._write(list(ends), list(records))
        except ChannelgateError:
            self._unwritten.append(_Unwritten(list(ends), list(records)))
            if len(self._unwritten) > MAX_UNWRITTEN:
                dropped = self._unwritten.pop(0)
                log.error(
                    "dropped %d unwritten logout(s): the database has been unreachable too long", len(dropped.ends)
                )
            raise

    async def flush(self) -> None:
        """Write what :meth:`remember` could not, oldest first; raises the first error (keeping what is left) when
        a write fails. Two failures in a row end the turn (the database is down). A write that fails while a later
        one succeeds is the entry's own fault (a value the database refuses): after ``MAX_FLUSH_FAILURES`` such
        turns it is dropped with an error log, so it cannot keep every later turn failing."""
        failed: list[_Unwritten] = []
        kept: list[_Unwritten] = []
        error: ChannelgateError | None = None
        for entry in list(self._unwritten):
            try:
                await self._write(entry.ends, entry.records)
            except ChannelgateError as exc:
                error = error or exc
                failed.append(entry)
                kept.append(entry)
                if len(failed) >= 2:  # two in a row: the database is down, try again next turn
                    break
                continue
            self._unwritten.remove(entry)
            for stuck in failed:  # a later write succeeded: the database is up, these entries fail on their own
                stuck.failures += 1
                if stuck.failures >= MAX_FLUSH_FAILURES and stuck in self._unwritten:
                    self._unwritten.remove(stuck)
                    log.error(
                        "dropped %d logout(s) of agent(s) %s the database refused %d times: %s",
                        len(stuck.ends),
                        sorted({end.agent_id for end in stuck.ends}),
                        stuck.failures,
                        error.message if error is not None else "",
                    )
            failed.clear()
        if error is not None and any(entry in self._unwritten for entry in kept):
            raise error

    async def ended_idp_session(self, sid: str, since: datetime, agent_id: str | None = None) -> bool:
        """Whether the IdP session ``sid`` (of ``agent_id`` when given) was ended at or after ``since``: saved, or
        kept in process to be (a provider resending a logout token after a 503 is answered as done)."""
        for entry in self._unwritten:
            for end in entry.ends:
                of_agent = agent_id is None or end.agent_id == agent_id
                if end.kind is EndKind.IDP_SESSION and end.sid == sid and end.ended_at >= since and of_agent:
                    return True
        return await self._ends.ended_idp_session(sid, since, agent_id)

    async def ended_for_sign_in(
        self, agent_id: str, sid: str | None, *, since: datetime, agent_wide_since: datetime
    ) -> EndKind | None:
        """Whether ``agent_id``'s sessions of the IdP session ``sid`` were ended at or after ``since``, or every one
        of them at or after ``agent_wide_since`` (``SessionEndRepository.ended_for_sign_in``): saved, or kept in
        process to be."""
        found = await self._ends.ended_for_sign_in(agent_id, sid, since=since, agent_wide_since=agent_wide_since)
        for entry in self._unwritten:
            for end in entry.ends:
                if end.agent_id != agent_id or found is EndKind.IDP_SESSION:
                    continue
                if end.kind is EndKind.IDP_SESSION and sid is not None and end.sid == sid and end.ended_at >= since:
                    found = EndKind.IDP_SESSION
                elif end.kind is EndKind.AGENT and end.ended_at >= agent_wide_since:
                    found = EndKind.AGENT
        return found

    async def since(self, cutoff: datetime) -> list[SessionEnd]:
        """The logouts remembered at or after ``cutoff``, oldest first: those written, then those kept in process
        (the sweep flushes only after it has run, and must not miss them)."""
        kept = [end for entry in self._unwritten for end in entry.ends if end.ended_at >= cutoff]
        return await self._ends.since(cutoff) + kept

    async def may_cover(
        self, agent_id: str, since: datetime, *, session_key: str, sid: str | None, created_after: datetime
    ) -> list[SessionEnd]:
        """``agent_id``'s logouts at or after ``since`` that may have ended one session
        (``SessionEndRepository.may_cover``): written, then every one of the agent's kept in process."""
        kept = [
            end for entry in self._unwritten for end in entry.ends if end.agent_id == agent_id and end.ended_at >= since
        ]
        written = await self._ends.may_cover(
            agent_id, since, session_key=session_key, sid=sid, created_after=created_after
        )
        return written + kept

    async def saved_before_login(self, agent_id: str, since: datetime) -> tuple[str, ...]:
        """The keys of the agent's agent-wide and IdP-session ends saved by now (``SessionEndRepository``): a login
        lists them in its session (``SessionData.after_ends``) before creating it. Each was saved after its kill had
        run, so none of them ended that session, and the sweep does not replay them against it (gateway/deprovision/
        revived.py). An end kept in process is not listed: it is replayed against every session, as before."""
        return await self._ends.saved_before_login(agent_id, since)

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
