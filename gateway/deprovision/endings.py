"""Ending an agent's sessions everywhere, and saving what ended before the end is reported done.

One agent's sessions (all of them, or those of one IdP session ``sid``) are deleted from the shared store, which
broadcasts the revocation; this replica closes the agent's open WebSockets and streams; every live replica
acknowledges once it closed its own (ASVS 7.4.2: ended means no replica serves them). A logout of an agent who
stays active — an OIDC back-channel logout, a CAEP session revocation, the console's "end sessions" — stops here;
a deprovisioning's kills (gateway/deprovision/kill.py, first_kills.py) end sessions the same way.

What ended is saved to ``session_ends`` (gateway/deprovision/logouts.py) after the store ended it and before the
logout is reported done, so the sweep after a session-store outage ends again what a restarted Redis brings back
(gateway/deprovision/revived.py). The store ends the sessions first, whatever the database does: a failed save
still leaves them ended, and says so (``EndsNotSaved``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.deprovision.logouts import Logouts
from gateway.errors import ChannelgateError, SessionStoreUnavailable, StorageError
from gateway.proxy.streams import LiveConnections
from gateway.sessions.base import SessionStore
from gateway.storage.session_ends import EndKind, SessionEnd
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.deprovision")


class EndClock:
    """When a saved end says the sessions ended: this host's clock, shifted onto the serving replicas' clock.

    The sweep after a session-store outage replays an agent-wide or IdP-session end over the sessions created before
    it (plus a margin for the replicas' clock skew, gateway/deprovision/revived.py), and each replica stamps the
    sessions it creates with its own clock, kept in agreement by their vote (gateway/sessions/redis_clock.py). A
    serving replica stamps ends with its own clock too (no ``read_shift``). A process outside that vote — the CLI's
    ``agents deprovision``, ``ldap sync`` and ``ldap approve`` — would stamp a kill early if its host's clock ran
    behind, and a replay would spare sessions created before the kill: it reads, before its first kill, how far to
    shift its stamps so they read no earlier than any serving replica's clock (``SessionStore.replicas_clock_shift``).
    """

    def __init__(self, read_shift: Callable[[], Awaitable[float | None]] | None = None) -> None:
        #: Reads the shift (None when it could not be read); None: this host's clock, unshifted.
        self.read_shift = read_shift
        #: In a serving replica: whether the vote agrees with its clock (then it stamps with its own). An outvoted
        #: replica may still end sessions (its directory sync, a kill retried): it reads the shift at each kill.
        self.trusted: Callable[[], bool] | None = None
        self.shift_seconds = 0.0
        self._read: asyncio.Future[None] | None = None

    async def ready(self) -> None:
        """Before a kill: read the shift if this process's clock is not to be trusted as it is.

        Outside the vote (the CLI) the shift is read once, before the process's first kill (the replicas' clocks and
        this host's drift apart by parts per million: a long LDAP sync needs no second read), and every kill that
        starts meanwhile waits for the same read, so kills arriving together still share one first-kill batch
        (gateway/deprovision/first_kills.py); a read that failed is tried again at the next kill. A serving replica
        the vote agrees with waits for nothing."""
        if self.read_shift is None:
            return
        if self.trusted is not None:
            if self.trusted():
                self.shift_seconds = 0.0
            else:
                await self._read_shift(self.read_shift)
            return
        if self._read is None or self._read.get_loop() is not asyncio.get_running_loop():
            self._read = asyncio.ensure_future(self._read_shift(self.read_shift))
        await asyncio.shield(self._read)

    async def _read_shift(self, read: Callable[[], Awaitable[float | None]]) -> None:
        try:
            shift = await read()
        except Exception:  # the kill matters more than its stamp: never let this read stop a deprovisioning
            log.exception("could not read the replicas' clocks: session ends are stamped with this host's clock")
            shift = None
        if shift is None:
            self._read = None  # not read: the next kill tries again
            return
        self.shift_seconds = shift

    def __call__(self) -> datetime:
        return utcnow() + timedelta(seconds=self.shift_seconds)


class EndsNotSaved(StorageError):
    """The sessions were ended but saving their end failed: kept in process and written later
    (gateway/deprovision/logouts.py). ``ended`` says what ended, so the caller's record can still say it."""

    def __init__(self, message: str, *, detail: str | None = None, ended: dict[str, EndedSessions]) -> None:
        super().__init__(message, detail=detail)
        self.ended = ended


@dataclass(frozen=True, slots=True)
class EndedSessions:
    """Steps 2-3 for one agent: how many sessions ended, and which replicas confirmed closing its connections."""

    count: int
    closed_here: int
    confirmed: frozenset[str]
    missing: frozenset[str]


class SessionEndings:
    """Ends agents' sessions on every replica and saves what ended (see the module docstring)."""

    def __init__(
        self,
        sessions: SessionStore,
        live: LiveConnections | None,
        ack_timeout: float,
        logouts: Logouts | None = None,
        clock: EndClock | None = None,
    ) -> None:
        """``logouts`` remembers what :meth:`end_sessions` ends (gateway/deprovision/logouts.py), stamped by
        ``clock``."""
        self._clock = clock or EndClock()
        self._sessions = sessions
        self._live = live
        self._ack_timeout = ack_timeout
        self._logouts = logouts

    async def end_sessions(self, agent_id: str, idp_session_id: str | None = None) -> EndedSessions | None:
        """End the agent's sessions on every replica (all of them, or those of one IdP session ``sid``), close
        its open WebSockets and streams, and wait for every live replica's acknowledgement. A logout (OIDC
        back-channel, CAEP, the console) stops here, and is remembered in the database before this returns, so
        the sweep after a session-store outage ends again what a restarted Redis brings back
        (gateway/deprovision/logouts.py; raises ``StorageError`` when that write fails, the sessions ended all the
        same). None when ``sid`` matched no session (nothing was ended or broadcast)."""
        return (await self.end_sessions_of([agent_id], idp_session_id)).get(agent_id)

    async def end_sessions_of(
        self, agent_ids: Sequence[str], idp_session_id: str | None = None
    ) -> dict[str, EndedSessions]:
        """:meth:`end_sessions` for several agents (a back-channel logout naming ``sid`` alone, a CAEP event naming
        an email several agents share): every agent's sessions are ended first, then what ended is saved in one
        write, so a database failure leaves no agent's sessions valid. Raises ``EndsNotSaved`` (a ``StorageError``
        saying what ended) when that write fails (the ends kept and written later, gateway/deprovision/logouts.py),
        or the first session-store error once the other agents' sessions are ended and saved. Agents for whom
        ``sid`` matched no session are left out."""
        await self._clock.ready()
        ended_at = self._clock()  # before the store ends them: a session created after this is not the logout's
        kind = EndKind.AGENT if idp_session_id is None else EndKind.IDP_SESSION
        results: dict[str, EndedSessions] = {}
        failed: ChannelgateError | None = None
        for agent_id in agent_ids:
            try:
                ended = await self.end_everywhere(agent_id, idp_session_id)
            except ChannelgateError as exc:
                failed = failed or exc
                continue
            if ended is not None:
                results[agent_id] = ended
        ends = [SessionEnd(ended_at, kind, a, sid=idp_session_id) for a, ended in results.items() if ended.count]
        if ends and self._logouts is not None:
            try:
                await self._logouts.remember(ends)
            except StorageError as exc:
                raise EndsNotSaved(exc.message, detail=exc.detail, ended=results) from exc
            await self._end_late_sign_ins(ends, idp_session_id)
        if failed is not None:
            raise failed
        return results

    async def end_unseen(self, agent_id: str, idp_session_id: str | None = None) -> bool:
        """The provider ended the agent's sessions — every one (a back-channel logout naming ``sub`` alone) or those
        of its IdP session ``sid`` — and no session here was one of them: save that end all the same, so that a
        sign-in still on its way from the provider — the agent's first here, or its first in that IdP session — is
        refused when it reaches the callback (gateway/oidc/routes.py reads the saved ends after creating its
        session), and end once more what such a sign-in created before the save. False when nothing saves ends
        here (no database). Raises ``StorageError`` when the save fails (the end kept in process and written later,
        as any end)."""
        if self._logouts is None:
            return False
        await self._clock.ready()
        kind = EndKind.AGENT if idp_session_id is None else EndKind.IDP_SESSION
        ends = [SessionEnd(self._clock(), kind, agent_id, sid=idp_session_id)]
        await self._logouts.remember(ends)
        await self._end_late_sign_ins(ends, idp_session_id)
        return True

    async def _end_late_sign_ins(self, ends: Sequence[SessionEnd], idp_session_id: str | None) -> None:
        """After the ends are saved: end once more what a sign-in created between the revocation (and the wait for
        the replicas' acknowledgements) and the save, of the agent (``idp_session_id`` None) or of that IdP session.
        Its callback reads the saved ends after creating its session (gateway/oidc/routes.py), so it missed this end
        only if it read before the save; then its session existed before the save, and this revocation, after it,
        ends it. A sign-in that started after the end and created its session in that window is ended too: its
        browser is asked to sign in again."""
        for end in ends:
            try:
                if idp_session_id is None:
                    await self._sessions.revoke_agent_if_any(end.agent_id)
                else:
                    await self._sessions.revoke_idp_session(end.agent_id, idp_session_id)
            except SessionStoreUnavailable:
                log.warning("could not end again the sessions of agent %s signed in as they ended", end.agent_id)

    async def end_everywhere(self, agent_id: str, idp_session_id: str | None = None) -> EndedSessions | None:
        """:meth:`end_sessions` without saving the end (the caller saves it, each in its own way)."""
        if idp_session_id is None:
            count, revocation = await self._sessions.revoke_agent(agent_id)
        else:
            count, found = await self._sessions.revoke_idp_session(agent_id, idp_session_id)
            if found is None:
                return None
            revocation = found
        closed = await self._live.close_agent(agent_id) if self._live is not None else 0
        confirmed, missing = await self._sessions.wait_for_acks(revocation, self._ack_timeout)
        return EndedSessions(count, closed, frozenset(confirmed), frozenset(missing))

    async def remember_kill(self, ends: list[SessionEnd]) -> None:
        """Save a deprovisioning's kills as agent-wide ends. A failed write is kept by ``Logouts`` (written at the
        sweep task's next turn or at shutdown), so it neither fails the deprovisioning nor is dropped."""
        if self._logouts is None or not ends:
            return
        try:
            await self._logouts.remember(ends)
        except ChannelgateError as exc:
            log.warning(
                "could not save the end of %d deprovisioned agent(s)' sessions, kept to be written later: %s",
                len(ends),
                exc.message,
            )
