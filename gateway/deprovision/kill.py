"""Step 1 of deprovisioning: end every session on every replica, mark the agent disabled, and end them again,
synchronously; queue steps 2-4 (``gateway/deprovision/worker.py``) in the same transaction as the disable.

Order matters. The sessions are ended first, before the disable's transaction (the first kill,
``gateway/deprovision/first_kills.py``: a lookup and one Redis script with its broadcast, no database write, no
waiting for acknowledgements): that is the moment the agent is shut out, and it must not queue behind the
transactions of other deprovisionings — in a storm of 100 at once each replica's transactions take turns, and the
last agent would keep working for over a second (docs/benchmarks.md §9). Every replica acknowledges that
broadcast once it closed the agent's connections, and the call waits for that before its transaction, so in a
storm the replicas close the sockets before the transactions' work reaches them. Then the agent is disabled (the
change commits together with its access-log record), so no login can start a session again. Then every session is
deleted from the shared store once more — a login that raced the first kill read the agent still active — and
broadcast again only if one was found (and acknowledged again). The call returns only after every live replica
acknowledged, so "deprovisioned" means no replica will serve the agent again (ASVS 7.4.2).

The pipeline run (revoke at each channel, hand tickets over, verify, remove) is inserted in the transaction that
disables the agent (a transactional outbox): there is no moment, and no crash, at which the agent is disabled but
the channel work is not queued. A trigger for an agent whose run is still going joins that run instead of
starting another (IdPs repeat their disable calls).

When the session store is down after the disable committed, the call fails (503, ``SessionsNotEnded``) but the
kill is not dropped: this process retries it every ``RETRY_MAX_DELAY`` at most until it lands. Otherwise the
agent's sessions would come back with the store (Redis with an append-only file keeps them), and a trigger that is
not repeated (an LDAP sync that now sees the agent disabled, a RISC event) would never end them. Nobody is served
while the store is down; a request in the moment between its return and the next attempt can still pass. When the
database is down instead, the first kill has ended the sessions and the call fails (the agent is not disabled:
the trigger must be repeated, and a login needs the database too).

What a deprovisioning's kills end is saved to ``session_ends`` as an agent-wide end, timed before each kill (one
insert for a batch of first kills, gateway/deprovision/first_kills.py; one for a kill after the disable that still
found a session): the sweep after a session-store outage finds the agent from its row only while it stays inactive,
and an agent enabled again soon after (a compromised account, its password reset) would otherwise get back the
sessions a restarted Redis revived. The save follows the kill and never holds it up; when the database fails it is
kept in this process and written at the sweep task's next turn or at shutdown (gateway/deprovision/logouts.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.writer import AuditLog
from gateway.deprovision.endings import EndClock, EndedSessions, SessionEndings
from gateway.deprovision.first_kills import FirstKills
from gateway.deprovision.logouts import Logouts
from gateway.deprovision.runs import Hold, RunPlanner, joined_run
from gateway.errors import ChannelgateError, NotFound, SessionStoreUnavailable
from gateway.metrics import Metrics
from gateway.proxy.streams import LiveConnections
from gateway.sessions.base import Revocation, SessionStore
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent, AgentRepository
from gateway.storage.database import Database
from gateway.storage.limits import fit_text, length_of
from gateway.storage.pipeline import PipelineRepository, RunRecord
from gateway.storage.schema import deprovision_runs
from gateway.storage.session_ends import EndKind, SessionEnd
from gateway.storage.sqlite_outbox import Outbox
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.deprovision")
#: What a run's reason, actor and successor hold (the successor a userName, which holds no more).
_REASON_LENGTH, _ACTOR_LENGTH, _SUCCESSOR_LENGTH = (
    length_of(deprovision_runs.c.reason),
    length_of(deprovision_runs.c.actor),
    length_of(deprovision_runs.c.successor),
)

#: Delays between the attempts to end a disabled agent's sessions while the session store is down (seconds).
RETRY_FIRST_DELAY = 0.1
RETRY_MAX_DELAY = 0.5
#: In a storm of deprovisionings each call ends its agent's sessions first, then disables the agent in a
#: transaction of its own. On PostgreSQL fifty of those in flight at once fill every turn of the event loop with
#: their continuations, and the work that ends access — the first kills of calls still arriving, the other
#: replica's revocation broadcasts, the closing of WebSockets — waits behind each of them in every turn. A few at a
#: time do the same work in the same total time and leave the turns short. (On SQLite the calls that arrive
#: together share one group commit, gateway/storage/sqlite_outbox.py: there fewer at a time cost throughput.)
DISABLE_CONCURRENCY = 4


class SessionsNotEnded(SessionStoreUnavailable):
    """The agent is disabled (it cannot sign in again) but its sessions could not be ended yet; the process that
    took the request keeps trying until they are."""

    code = "sessions_not_ended"


@dataclass(frozen=True, slots=True)
class _FirstEnded:
    """What a deprovisioning's first kill ended, and its broadcast (None: the store was unreachable then)."""

    sessions: int
    closed: int
    revocation: Revocation | None


@dataclass(frozen=True, slots=True)
class KillResult:
    agent: Agent
    sessions_revoked: int
    connections_closed_here: int
    replicas_confirmed: frozenset[str]
    replicas_missing: frozenset[str]
    duration_ms: float
    run: RunRecord | None = None

    def as_dict(self) -> dict[str, object]:
        pipeline = None if self.run is None else {"run_id": self.run.id, "state": self.run.state.value}
        return {
            "agent_id": self.agent.id,
            "user_name": self.agent.user_name,
            "active": self.agent.active,
            "sessions_revoked": self.sessions_revoked,
            "connections_closed_here": self.connections_closed_here,
            "replicas_confirmed": sorted(self.replicas_confirmed),
            "replicas_missing": sorted(self.replicas_missing),
            "duration_ms": round(self.duration_ms, 1),
            "pipeline": pipeline,
        }


class SessionKiller:
    def __init__(
        self,
        database: Database,
        agents: AgentRepository,
        sessions: SessionStore,
        live: LiveConnections | None,
        audit: AuditLog,
        metrics: Metrics,
        ack_timeout: float,
        planner: RunPlanner | None = None,
        runs: PipelineRepository | None = None,
        logouts: Logouts | None = None,
    ) -> None:
        """``logouts`` remembers what the kills end (gateway/deprovision/logouts.py)."""
        self._database = database
        self._agents = agents
        self._sessions = sessions
        self._live = live
        self._audit = audit
        self._metrics = metrics
        self._ack_timeout = ack_timeout
        self._planner = planner
        self._runs = runs
        #: Called after a run was queued and committed (the local worker wakes up instead of waiting to poll).
        self.on_enqueued: Callable[[], None] | None = None
        #: Called when a deprovisioning starts here (the serving process defers its full garbage collection).
        self.on_ending: Callable[[], None] | None = None
        #: Kills that failed on an unreachable session store, retried until they land (one per agent).
        self._retrying: dict[str, asyncio.Task[None]] = {}
        #: What the first kill ended and broadcast, per agent: the kill that follows counts it in its record and
        #: waits for that broadcast's acknowledgements when it finds nothing more to end.
        self._ended_first: dict[str, _FirstEnded] = {}
        #: Stamps the ends saved; outside the replicas' clock vote (the CLI) shifted onto their clock before a kill.
        self.end_clock = EndClock(sessions.replicas_clock_shift)
        #: Ends sessions everywhere and saves what ended: logouts call it directly, the kills below through it.
        self.endings = SessionEndings(sessions, live, ack_timeout, logouts, self.end_clock)
        self._first_kills = FirstKills(agents, sessions, live, self.endings.remember_kill, self.end_clock)
        #: The acknowledgements of each first kill's broadcast, collected before the disable.
        self._first_acks: dict[str, tuple[set[str], set[str]]] = {}
        #: Disable transactions in flight at once (the rest wait their turn, their sessions already ended).
        self._disables = asyncio.Semaphore(DISABLE_CONCURRENCY)

    async def enqueue_in(
        self,
        conn: AsyncConnection,
        agent: Agent,
        *,
        was_active: bool,
        source: str,
        actor: str,
        reason: str,
        successor: str | None = None,
    ) -> RunRecord | None:
        """Queue the agent's pipeline run in ``conn``'s transaction (the one disabling the agent), unless a run
        for it is still going, or it was already disabled and has been through the pipeline before."""
        if self._planner is None or self._runs is None:
            return None
        previous = await self._runs.runs_of_agent(agent.id, conn=conn)
        joined = joined_run(previous, was_active=was_active)
        if joined is not None:
            return joined
        return await self._planner.enqueue(
            agent, source=source, actor=actor, reason=reason, successor=successor, now=utcnow(), conn=conn
        )

    async def disabled_in(
        self, conn: AsyncConnection, agent: Agent, *, was_active: bool, source: str, actor: str, reason: str
    ) -> RunRecord | None:
        """The agent was just disabled in ``conn``'s transaction by another writer (SCIM): record the disable and
        queue its run in that same transaction; :meth:`kill_sessions` follows once it committed."""
        await self._audit.write(_disabled_record(agent, utcnow(), reason, actor, source), conn=conn)
        return await self.enqueue_in(conn, agent, was_active=was_active, source=source, actor=actor, reason=reason)

    async def end_sessions_first(self, agent_id: str) -> None:
        """End the agent's sessions everywhere before its disable commits: delete them from the store, broadcast
        the revocation, close its connections here; the acknowledgements are awaited by the kill after the commit.
        An unreachable store is left to that kill, which fails the call and retries (see the module docstring)."""
        try:
            count, revocation = await self._sessions.revoke_agent(agent_id)
        except SessionStoreUnavailable:
            return
        closed = await self._live.close_agent(agent_id) if self._live is not None else 0
        self._count_first(agent_id, count, closed, revocation)

    def _count_first(self, agent_id: str, sessions: int, closed: int, revocation: Revocation | None) -> None:
        before = self._ended_first.get(agent_id)
        if before is not None:
            sessions, closed = sessions + before.sessions, closed + before.closed
            revocation = revocation or before.revocation
        self._ended_first[agent_id] = _FirstEnded(sessions, closed, revocation)

    async def _end_again(self, agent_id: str) -> EndedSessions:
        """The kill after the disable. When the first kill was broadcast, only a session a login started in
        between is left to end: broadcast only if there is one, else wait for the first broadcast's
        acknowledgements (in a storm, every replica then applies one revocation per agent, not two)."""
        first = self._ended_first.get(agent_id)
        ended_at = self.end_clock()  # before the kill, as the first kill's
        if first is None or first.revocation is None:
            ended = await self.endings.end_everywhere(agent_id)
            assert ended is not None  # every session of the agent: a revocation is always broadcast
            if ended.count:
                await self.endings.remember_kill([SessionEnd(ended_at, EndKind.AGENT, agent_id)])
            return ended
        count, revocation = await self._sessions.revoke_agent_if_any(agent_id)
        closed = await self._live.close_agent(agent_id) if self._live is not None else 0
        if count:  # a login raced the first kill
            await self.endings.remember_kill([SessionEnd(ended_at, EndKind.AGENT, agent_id)])
        acknowledged = self._first_acks.pop(agent_id, None)
        if revocation is None and acknowledged is not None:
            confirmed, missing = acknowledged
        else:
            confirmed, missing = await self._sessions.wait_for_acks(revocation or first.revocation, self._ack_timeout)
        return EndedSessions(count, closed, frozenset(confirmed), frozenset(missing))

    async def _disable(
        self, agent: Agent, *, reason: str, actor: str, source: str, successor: str | None
    ) -> tuple[Agent, RunRecord | None]:
        """Step 1's transaction through the engine: disable, its record, the queued run (the outbox)."""
        now = utcnow()
        was_active = agent.active
        async with self._database.begin() as conn:
            agent = await self._agents.set_active(agent.id, False, reason, now, conn=conn)
            await self._audit.write(_disabled_record(agent, now, reason, actor, source), conn=conn)
            run = await self.enqueue_in(
                conn, agent, was_active=was_active, source=source, actor=actor, reason=reason, successor=successor
            )
        return agent, run

    def _disable_in(
        self,
        outbox: Outbox,
        identifier: str,
        now: datetime,
        *,
        reason: str,
        actor: str,
        source: str,
        successor: str | None,
    ) -> tuple[Agent, RunRecord | None, Hold | None] | None:
        """:meth:`_disable` as one direct SQLite transaction (run in the writer's thread); None when no live agent
        is named ``identifier``. Finding the agent inside the transaction also closes the window in which another
        writer could change it between the lookup and the disable."""
        found = outbox.find_agent(identifier)
        agent = outbox.disable_agent(found.id, reason, now) if found is not None else None
        if found is None or agent is None:
            return None
        outbox.append_log([_disabled_record(agent, now, reason, actor, source)])
        if self._planner is None:
            return agent, None, None
        joined = joined_run(outbox.runs_of_agent(agent.id), was_active=found.active)
        if joined is not None:
            return agent, joined, None
        run, hold = self._planner.enqueue_in(
            outbox, agent, source=source, actor=actor, reason=reason, successor=successor, now=now
        )
        return agent, run, hold

    async def deprovision(
        self, identifier: str, *, reason: str, actor: str, source: str, successor: str | None = None
    ) -> KillResult:
        """Disable the agent named by id or userName, queue its pipeline run, and kill every session everywhere
        before returning. ``successor`` (a userName) takes the agent's open tickets instead of its manager.

        The reason, the actor and the successor come from an admin's request: fitted first to what the database
        holds (gateway/storage/limits.py), since a value it refused failed the disable's transaction after the
        sessions had ended, and the agent stayed enabled."""
        started = time.perf_counter()
        reason, actor = fit_text(reason, _REASON_LENGTH), fit_text(actor, _ACTOR_LENGTH)
        successor = fit_text(successor, _SUCCESSOR_LENGTH) if successor is not None else None
        if self.on_ending is not None:
            self.on_ending()
        await self.end_clock.ready()
        # The first kill, batched with those of other deprovisionings arriving meanwhile (a storm).
        first = await self._first_kills.end(identifier)
        found = first.agent
        if found is None:
            raise NotFound(f"No agent has the id or userName {identifier!r}.")
        self._count_first(found.id, first.sessions, first.closed_here, first.revocation)
        if first.revocation is not None:
            # Every replica closes the agent's connections before this call adds its transaction to their work.
            self._first_acks[found.id] = await self._sessions.wait_for_acks(first.revocation, self._ack_timeout)
        try:
            agent, run = await self._disable_found(found, identifier, reason, actor, source, successor)
        except ChannelgateError:
            self._record_first_kill_alone(found, reason=reason, actor=actor, source=source)
            raise
        if run is not None and self.on_enqueued is not None:
            self.on_enqueued()
        result = await self._kill(agent, run, started, reason=reason, actor=actor, source=source)
        if first.saved is not None:
            await first.saved  # "deprovisioned" only once the first kill's end is saved or kept to be
        return result

    async def _disable_found(
        self, found: Agent, identifier: str, reason: str, actor: str, source: str, successor: str | None
    ) -> tuple[Agent, RunRecord | None]:
        """Step 1's transaction for the agent the first kill found: directly on SQLite, else through the engine."""
        outbox = self._runs.outbox if self._runs is not None else None
        if outbox is not None:
            # SQLite: the same transaction by sqlite3 in the writer's thread, one group commit with other triggers.
            now = utcnow()
            disabled = await outbox.run(
                lambda box: self._disable_in(
                    box, found.id, now, reason=reason, actor=actor, source=source, successor=successor
                )
            )
            if disabled is None:  # deleted since it was found
                raise NotFound(f"No agent has the id or userName {identifier!r}.")
            agent, run, hold = disabled
            if run is not None and hold is not None and self._planner is not None:
                self._planner.announce(run, hold)
            return agent, run
        # Through the engine (PostgreSQL): a few transactions at a time (DISABLE_CONCURRENCY). Not on SQLite above,
        # where the calls that arrive together share one group commit and fewer at a time would mean more commits.
        async with self._disables:
            return await self._disable(found, reason=reason, actor=actor, source=source, successor=successor)

    def _record_first_kill_alone(self, agent: Agent, *, reason: str, actor: str, source: str) -> None:
        """The disable failed after the first kill ended sessions: that action gets its record too, through the
        queue (kept and retried while the database is down), since the strict write is what just failed."""
        first = self._ended_first.pop(agent.id, None)
        if first is None or (not first.sessions and not first.closed):
            return
        detail = {"source": source, "sessions": first.sessions, "step": "before the disable, which failed"}
        record = _revoked_record(agent, actor, reason, detail)
        try:
            self._audit.submit(record)
        except ChannelgateError as exc:
            log.error("could not queue the record of agent %s's ended sessions: %s", agent.id, exc.message)

    async def kill_sessions(self, agent_id: str, *, reason: str, actor: str, source: str) -> KillResult:
        """Kill every session everywhere of an agent that a committed transaction already disabled (and queued
        the run of, :meth:`disabled_in`): the SCIM path, which would otherwise disable it a second time."""
        started = time.perf_counter()
        await self.end_clock.ready()
        agent = await self._agents.get(agent_id)
        if agent is None:
            raise NotFound(f"No agent has the id {agent_id!r}.")
        if agent.active:
            # Not what the caller promised: never end sessions of an agent who could log straight back in.
            return await self.deprovision(agent_id, reason=reason, actor=actor, source=source)
        if self.on_enqueued is not None:
            self.on_enqueued()
        return await self._kill(agent, None, started, reason=reason, actor=actor, source=source)

    async def _kill(
        self, agent: Agent, run: RunRecord | None, started: float, *, reason: str, actor: str, source: str
    ) -> KillResult:
        """End the disabled agent's sessions everywhere and record it; on an unreachable session store, keep
        retrying in the background and raise ``SessionsNotEnded``."""
        try:
            return await self._end_and_record(agent, run, started, reason=reason, actor=actor, source=source)
        except SessionStoreUnavailable:
            if agent.id not in self._retrying:
                task = asyncio.create_task(
                    self._retry_kill(agent, run, reason=reason, actor=actor, source=source),
                    name=f"channelgate-kill-retry-{agent.id}",
                )
                self._retrying[agent.id] = task
                task.add_done_callback(lambda _: self._retrying.pop(agent.id, None))
            raise SessionsNotEnded(
                f"Agent {agent.user_name!r} is disabled and cannot sign in again, but its open sessions could not "
                "be ended yet: the session store (Redis) is unreachable. The process that took this request keeps "
                "trying until they are; repeat the deprovisioning once the store is back to confirm it."
            ) from None

    async def _retry_kill(self, agent: Agent, run: RunRecord | None, *, reason: str, actor: str, source: str) -> None:
        """Try again, with a growing delay, until the sessions are ended and recorded."""
        delay, attempts = RETRY_FIRST_DELAY, 1
        log.error("could not end the sessions of disabled agent %s: session store unreachable; retrying", agent.id)
        while True:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                result = await self._end_and_record(
                    agent, run, time.perf_counter(), reason=reason, actor=actor, source=source, attempts=attempts
                )
            except ChannelgateError as exc:
                delay = min(delay * 2, RETRY_MAX_DELAY)
                log.debug("attempt %d to end the sessions of agent %s failed: %s", attempts, agent.id, exc.message)
                continue
            log.warning(
                "ended %d session(s) of disabled agent %s after %d attempts",
                result.sessions_revoked,
                agent.id,
                attempts,
            )
            return

    async def _end_and_record(
        self,
        agent: Agent,
        run: RunRecord | None,
        started: float,
        *,
        reason: str,
        actor: str,
        source: str,
        attempts: int = 1,
    ) -> KillResult:
        """Steps 2-4 for a disabled agent, then the ``sessions_revoked`` record (with the attempts it took)."""
        outbox = self._runs.outbox if self._runs is not None else None
        ended = await self._end_again(agent.id)
        first = self._ended_first.pop(agent.id, None) or _FirstEnded(0, 0, None)
        count, confirmed, missing = ended.count + first.sessions, ended.confirmed, ended.missing
        duration = (time.perf_counter() - started) * 1000
        result = KillResult(agent, count, ended.closed_here + first.closed, confirmed, missing, duration, run)
        detail: dict[str, object] = {
            "source": source,
            "sessions": count,
            "replicas_confirmed": sorted(confirmed),
            "replicas_missing": sorted(missing),
        } | ({"attempts": attempts} if attempts > 1 else {})
        record = _revoked_record(agent, actor, reason, detail, duration_ms=round(duration))
        if outbox is not None:
            await outbox.append_log([record])
        else:
            await self._audit.write(record)
        self._metrics.revocations.inc()
        self._metrics.sessions_revoked.inc(count)
        return result


def _revoked_record(
    agent: Agent, actor: str, reason: str, detail: dict[str, object], *, duration_ms: int | None = None
) -> AccessRecord:
    """The ``sessions_revoked`` record of a kill."""
    return AccessRecord(
        time=utcnow(),
        kind="sessions_revoked",
        agent_id=agent.id,
        agent_name=agent.user_name,
        actor=actor,
        reason=reason,
        decision="revoked",
        duration_ms=duration_ms,
        detail=detail,
    )


def _disabled_record(agent: Agent, now: datetime, reason: str, actor: str, source: str) -> AccessRecord:
    return AccessRecord(
        time=now,
        kind="deprovision",
        agent_id=agent.id,
        agent_name=agent.user_name,
        actor=actor,
        reason=reason,
        decision="disabled",
        detail={"source": source, "step": "disable"},
    )
