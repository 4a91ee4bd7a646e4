"""Sessions that a restarted or failed-over Redis brought back, ended again.

Redis acknowledges a write before it is safe: with AOF ``appendfsync everysec`` the last second can be lost in a
host crash, an RDB snapshot loses everything since it was taken, and a failover can promote a replica that had not
received the last writes (``[sessions.redis] wait_for_replicas`` narrows that, gateway/sessions/redis_replication.py).
A revocation lost that way brings the ended sessions back, valid: an agent deprovisioned just before the crash could
go on working, and a copy of a logged-out session's cookie would work again.

Two things answer it. For ``RECOVERY_CHECK_SECONDS`` after the store last failed to answer, every session is also
checked against its agent's row (gateway/authn.py, gateway/forward_auth_memo.py): a revived session used then is
refused and deleted. That alone leaves the revived sessions nobody used in the window valid afterwards, so once the
store answers again (and once when the gateway starts: a gateway restarted together with Redis saw no outage) this
sweep ends again the sessions of every agent made inactive recently — within the longest a session can live, since
an older session has expired whatever Redis holds — and the check against agents' rows stays on until the sweep has
completed. Each agent whose sessions it ended gets a ``sessions_revoked`` record saying why.

The same sweep ends again what the ends saved in the database ended (gateway/deprovision/logouts.py): logouts of
agents who stay active, and deprovisionings' kills (an agent enabled again soon after, its password reset, would
otherwise get its revived sessions back). It reads the ends of the last idle timeout + ``LIFETIME_MARGIN_SECONDS``,
counted from when the sweep fell due: a revived session was last seen no later than the end that deleted it (it
could not be used after it), so it has expired by idle timeout once the end is older — for an agent-wide or
IdP-session end as for a logout's one session. Each agent with ends is read once (``sessions_of``, ``CONCURRENCY``
at a time). A ``/.channelgate/logout`` names its one session by storage key: exact. An agent-wide or IdP-session end
covers the sessions created before it (plus :func:`clock_margin_seconds`). Whether Redis really lost the end cannot
be told from Redis afterwards (a marker written after the revocation can reach a Redis restarted without it, between
the two writes), so every such end in the window is replayed, also at a plain start or rolling deploy: a session
signed in to within the margin after an agent-wide or IdP-session end is ended then too (fail closed; the agent
signs in again) — unless its login had read that end as saved (``SessionData.after_ends``,
:meth:`RevivedSessions.ends_before_login`): an end is saved after its kill ran, so a login that saw it came after
the kill, and its session cannot be one the kill ended. Each session ended again gets a ``sessions_revoked`` record,
also when another agent's replay in the same turn failed. While :meth:`RevivedSessions.checking`, a session used is
also checked against its agent's saved ends (:meth:`RevivedSessions.believed`, one indexed read): the check against
agents' rows cannot see a logout (the agent is active), so without it a copy of a revived logged-out session's
cookie worked from the store answering again until the sweep's next turn (``HEARTBEAT_SECONDS``, gateway/app.py) and
its own time had passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gateway.audit.writer import AuditLog
from gateway.deprovision.logouts import Logouts
from gateway.errors import ChannelgateError, StorageError
from gateway.metrics import Metrics
from gateway.sessions.base import Session, SessionData, SessionStore, session_key
from gateway.sessions.redis_clock import DEFAULT_MAX_CLOCK_SKEW_SECONDS
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.storage.session_ends import EndKind, SessionEnd
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.sessions")

#: After the session store failed to answer, how long every session is also checked against the agent's row.
RECOVERY_CHECK_SECONDS = 60.0
#: Added to the longest session lifetime when choosing the agents to sweep: replicas' clocks decide expiry
#: (``expiry_grace_seconds`` lets a lookup see a session a little past it).
LIFETIME_MARGIN_SECONDS = 600
_MICROSECOND = timedelta(microseconds=1)
#: Agents read again (still inactive?) per query before their sessions are ended.
BATCH = 100
#: Agents whose saved ends are replayed at once (each one read of its sessions, a round trip to the store).
CONCURRENCY = 32
#: What the clock margin adds beyond the replicas' clock skew: the time the kill itself takes.
KILL_SECONDS = 5.0


def clock_margin_seconds(max_clock_skew_seconds: float) -> float:
    """How long after an end of every session of an agent (or of one IdP session) a session it ended may have been
    created, by the clock of the replica that created it: each replica stamps with its own clock, and one running
    ahead of the one that ended them must not hide a session the end did end. Serving replicas each agree with a
    majority (or with Redis) within ``[sessions.redis] max_clock_skew_seconds`` (gateway/sessions/redis_clock.py),
    so two of them differ by at most twice that; plus the kill's own time. A login that soon after is ended too
    (the agent signs in again): fail closed. 15 s with the default skew allowance of 5 s."""
    return 2 * max_clock_skew_seconds + KILL_SECONDS


CLOCK_MARGIN_SECONDS = clock_margin_seconds(DEFAULT_MAX_CLOCK_SKEW_SECONDS)


class RevivedSessions:
    """Ends again, after a session-store outage, the sessions of agents made inactive recently and those that
    recent logouts ended."""

    def __init__(
        self,
        agents: AgentRepository,
        sessions: SessionStore,
        audit: AuditLog,
        metrics: Metrics,
        *,
        session_lifetime_seconds: float,
        idle_timeout_seconds: float | None = None,
        logouts: Logouts | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        clock_margin: float = CLOCK_MARGIN_SECONDS,
    ) -> None:
        """``clock`` reads the sessions' liveness (``sessions_of``); the wall clock, as the stores stamp sessions with
        (tests pass their own). ``idle_timeout_seconds`` bounds the replay of saved ends (the lifetime when None);
        ``clock_margin`` is :func:`clock_margin_seconds` of the clock skew allowed."""
        self._clock_margin = clock_margin
        self._agents = agents
        self._sessions = sessions
        self._audit = audit
        self._metrics = metrics
        self._lifetime = timedelta(seconds=session_lifetime_seconds + LIFETIME_MARGIN_SECONDS)
        self._logouts = logouts
        self._monotonic = monotonic
        self._clock = clock
        idle = session_lifetime_seconds if idle_timeout_seconds is None else idle_timeout_seconds
        #: A revived session was last seen no later than the end that deleted it, so it expires by idle timeout.
        self._replay_window = timedelta(seconds=idle + LIFETIME_MARGIN_SECONDS)
        #: When a sweep was first found due since the last completed one (wall clock): the replay window reaches back
        #: from there, since a revived session used meanwhile (its ``seen`` moving on) stays alive until swept.
        self._due_since: datetime | None = None
        #: When the last completed sweep started (monotonic); None before the first.
        self._swept_at: float | None = None
        #: Records of sessions ended whose write failed: written before anything else at the next turn.
        self._unwritten: list[AccessRecord] = []
        self._writing = asyncio.Lock()

    @property
    def clock_margin(self) -> float:
        """Seconds an end stamped by one replica may read early on another's clock (:func:`clock_margin_seconds`)."""
        return self._clock_margin

    def due(self) -> bool:
        """No sweep has completed since the store last failed to answer (or since the gateway started)."""
        if self._swept_at is None:
            return True
        return self._sessions.unreachable_within(self._monotonic() - self._swept_at)

    def checking(self) -> bool:
        """Whether a session must also be checked against its agent's row before it is believed: shortly after an
        outage, and for as long as the sweep after it has not completed."""
        return self._sessions.unreachable_within(RECOVERY_CHECK_SECONDS) or self.due()

    async def believed(self, session: Session) -> bool:
        """Whether ``session`` (found valid, named by its id) may be believed while :meth:`checking`: its agent is
        still active and no saved end ended it. One that fails is deleted on the spot, so the sweep cannot miss it
        and the next lookup finds nothing; one a saved end ended gets the sweep's record, saying it was used."""
        data = session.data
        agent = await self._agents.get(data.agent_id)
        if agent is None or not agent.active:
            await self._sessions.delete(session.id)
            return False
        if self._logouts is None:
            return True
        key = session_key(session.id)
        ends = await self._logouts.may_cover(
            data.agent_id,
            (self._due_since or utcnow()) - self._replay_window,
            session_key=key,
            sid=data.idp_session_id,
            # A microsecond less: the stored time is rounded to microseconds, the comparison is strict.
            created_after=datetime.fromtimestamp(session.created_at - self._clock_margin, UTC) - _MICROSECOND,
        )
        end = _covering(ends, key, session, self._clock_margin)
        if end is None:
            return True
        if await self._sessions.delete(session.id) is not None:
            self._metrics.sessions_revoked.inc()
            self._unwritten.append(_logout_record(end, data, used=True))
            with contextlib.suppress(ChannelgateError):  # kept: the sweep task's next turn writes it first
                await self._write_records()
        return False

    async def ends_before_login(self, agent_id: str) -> tuple[str, ...]:
        """For a login about to create a session: the agent's agent-wide and IdP-session ends saved by now that could
        cover a session created now (within twice the clock margin: the end's stamp and this replica's clock may
        differ by the margin themselves). The session lists them (``SessionData.after_ends``) and is never ended for
        them: each was saved after its kill ran, before the session existed. None listed when the database does not
        answer (logged): the login goes on, and a sweep may end that session later (fail closed: a nuisance only)."""
        if self._logouts is None:
            return ()
        since = utcnow() - timedelta(seconds=2 * self._clock_margin)
        try:
            return await self._logouts.saved_before_login(agent_id, since)
        except StorageError as exc:
            log.warning("could not read agent %s's saved session ends at login: %s", agent_id, exc.message)
            return ()

    async def sweep_if_due(self) -> int:
        """Sweep when :meth:`due`; the number of sessions ended. Raises ``ChannelgateError`` (store or database
        unreachable): the sweep stays due and the caller tries again at its next turn, and the records of sessions
        already ended are kept and written first then (nothing ended goes unrecorded)."""
        await self._write_records()
        cutoff = utcnow() - self._lifetime
        ended = 0
        if self.due():
            self._due_since = self._due_since or utcnow()
            ended = await self._sweep(cutoff)
            self._due_since = None
        if self._logouts is not None:
            # After the sweep: an end the database keeps refusing must not stop the sweep (Logouts.flush drops it).
            await self._logouts.flush()
            await self._logouts.prune_if_due(cutoff)
        return ended

    async def _sweep(self, cutoff: datetime) -> int:
        started = self._monotonic()
        inactive = await self._agents.inactive_since(cutoff)
        ended = agents_ended = 0
        for start in range(0, len(inactive), BATCH):
            # Read again just before ending: an agent made active meanwhile may have signed in anew.
            batch = await self._agents.inactive_since(cutoff, ids=[a.id for a in inactive[start : start + BATCH]])
            for agent in batch:
                # Broadcast only when a session did come back: a sweep after every outage must not send every
                # replica one revocation per recently disabled agent.
                count, _ = await self._sessions.revoke_agent_if_any(agent.id)
                if count:
                    self._unwritten.append(_record(agent.id, agent.user_name, count))
                    agents_ended += 1
                    ended += count
                    self._metrics.revocations.inc()
                    self._metrics.sessions_revoked.inc(count)
            await self._write_records()
        if ended:
            log.warning(
                "the session store brought back %d session(s) of %d inactive agent(s); they were ended again",
                ended,
                agents_ended,
            )
        logged_out = await self._end_logouts_again() if self._logouts is not None else 0
        if logged_out:
            log.warning("the session store brought back %d logged-out session(s); they were ended again", logged_out)
        self._swept_at = started
        return ended + logged_out

    async def _end_logouts_again(self) -> int:
        """End again what the ends saved within the replay window ended and the store holds again, each agent once
        and ``CONCURRENCY`` agents at a time; one record per session ended."""
        assert self._logouts is not None and self._due_since is not None
        by_agent: dict[str, list[SessionEnd]] = {}
        for end in await self._logouts.since(self._due_since - self._replay_window):
            by_agent.setdefault(end.agent_id, []).append(end)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def agent_again(ends: list[SessionEnd]) -> list[tuple[SessionEnd, SessionData]]:
            async with gate:
                return await self._end_again(ends)

        ended = 0
        failed: BaseException | None = None
        # Every agent's outcome, also when another's failed: what was ended is recorded (gather would drop it).
        for found in await asyncio.gather(*(agent_again(ends) for ends in by_agent.values()), return_exceptions=True):
            if isinstance(found, BaseException):
                failed = failed or found
                continue
            for end, data in found:
                self._unwritten.append(_logout_record(end, data))
                ended += 1
                self._metrics.sessions_revoked.inc()
        await self._write_records()
        if failed is not None:
            raise failed
        return ended

    async def _end_again(self, ends: list[SessionEnd]) -> list[tuple[SessionEnd, SessionData]]:
        """One agent's sessions that its saved ``ends`` ended and the store holds again, deleted by storage key
        (broadcast only then): one read of the agent's sessions."""
        ended = []
        for session in await self._sessions.sessions_of(ends[0].agent_id, self._clock()):
            end = _covering(ends, session.id, session, self._clock_margin)
            if end is None:
                continue
            data = await self._sessions.delete_key(session.id)  # sessions_of names them by storage key
            if data is not None:
                ended.append((end, data))
        return ended

    async def _write_records(self) -> None:
        """Write the records kept so far. Requests (:meth:`believed`) and the sweep task both add and write: one
        writer at a time, and what is added while a write is in flight stays for the next."""
        async with self._writing:
            if not self._unwritten:
                return
            batch = list(self._unwritten)
            await self._audit.write(*batch)
            del self._unwritten[: len(batch)]


def _record(agent_id: str, user_name: str, count: int) -> AccessRecord:
    return AccessRecord(
        time=utcnow(),
        kind="sessions_revoked",
        agent_id=agent_id,
        agent_name=user_name,
        actor="channelgate",
        reason="sessions revived by a session-store restart or failover, ended again",
        decision="revoked",
        detail={"source": "session-store-recovery", "sessions": count},
    )


def _logout_record(end: SessionEnd, data: SessionData, *, used: bool = False) -> AccessRecord:
    """The record of a logged-out session ended again: by the sweep, or refused when used before it (``used``)."""
    detail: dict[str, object] = {
        "source": "session-store-recovery",
        "sessions": 1,
        "ended": end.kind.value,
        "ended_at": end.ended_at.isoformat(),
    }
    if used:
        detail["refused"] = "on use"
    return AccessRecord(
        time=utcnow(),
        kind="sessions_revoked",
        agent_id=data.agent_id,
        agent_name=data.user_name,
        actor="channelgate",
        reason="a logged-out session revived by a session-store restart or failover, "
        + ("refused when used and ended again" if used else "ended again"),
        decision="revoked",
        detail=detail,
    )


def _covering(ends: list[SessionEnd], key: str, session: Session, margin: float) -> SessionEnd | None:
    """The saved end that ended ``session`` (whose storage key is ``key``), if any. A logout names it by key
    (exact). An agent-wide or IdP-session end covers the sessions created before it (+ ``margin``)."""
    for end in ends:
        if end.kind is EndKind.LOGOUT:
            if end.session_key == key:
                return end
            continue
        if session.created_at >= end.ended_at.timestamp() + margin:
            continue  # signed in after the end
        if end.saved_key is not None and end.saved_key in session.data.after_ends:
            continue  # saved before this session's login read it: its kill ran before the session existed
        if end.kind is EndKind.IDP_SESSION and session.data.idp_session_id != end.sid:
            continue
        return end
    return None
