"""Sessions that a restarted or failed-over Redis brought back, ended again.

Redis acknowledges a write before it is safe: with AOF ``appendfsync everysec`` the last second can be lost in a
host crash, an RDB snapshot loses everything since it was taken, and a failover can promote a replica that had not
received the last writes (``[sessions.redis] wait_for_replicas`` narrows that, gateway/sessions/redis_replication.py).
A revocation lost that way brings the ended sessions back, valid: an agent deprovisioned just before the crash could
go on working.

Two things answer it. For ``RECOVERY_CHECK_SECONDS`` after the store last failed to answer, every session is also
checked against its agent's row (gateway/authn.py, gateway/forward_auth_memo.py): a revived session used then is
refused and deleted. That alone leaves the revived sessions nobody used in the window valid afterwards, so once the
store answers again (and once when the gateway starts: a gateway restarted together with Redis saw no outage) this
sweep ends again the sessions of every agent made inactive recently — within the longest a session can live, since
an older session has expired whatever Redis holds — and the check against agents' rows stays on until the sweep has
completed. Each agent whose sessions it ended gets a ``sessions_revoked`` record saying why.

Not covered: a lost logout or IdP session logout of an agent who is still active (the browser has dropped its
cookie; a copy of it stays valid until its timeouts) — docs/hardening.md says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from gateway.audit.writer import AuditLog
from gateway.metrics import Metrics
from gateway.sessions.base import SessionStore
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.sessions")

#: After the session store failed to answer, how long every session is also checked against the agent's row.
RECOVERY_CHECK_SECONDS = 60.0
#: Added to the longest session lifetime when choosing the agents to sweep: replicas' clocks decide expiry
#: (``expiry_grace_seconds`` lets a lookup see a session a little past it).
LIFETIME_MARGIN_SECONDS = 600
#: Agents read again (still inactive?) per query before their sessions are ended.
BATCH = 100


class RevivedSessions:
    """Ends again, after a session-store outage, the sessions of agents made inactive recently."""

    def __init__(
        self,
        agents: AgentRepository,
        sessions: SessionStore,
        audit: AuditLog,
        metrics: Metrics,
        *,
        session_lifetime_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agents = agents
        self._sessions = sessions
        self._audit = audit
        self._metrics = metrics
        self._lifetime = timedelta(seconds=session_lifetime_seconds + LIFETIME_MARGIN_SECONDS)
        self._monotonic = monotonic
        #: When the last completed sweep started (monotonic); None before the first.
        self._swept_at: float | None = None
        #: Records of sessions ended whose write failed: written before anything else at the next turn.
        self._unwritten: list[AccessRecord] = []

    def due(self) -> bool:
        """No sweep has completed since the store last failed to answer (or since the gateway started)."""
        if self._swept_at is None:
            return True
        return self._sessions.unreachable_within(self._monotonic() - self._swept_at)

    def checking(self) -> bool:
        """Whether a session must also be checked against its agent's row before it is believed: shortly after an
        outage, and for as long as the sweep after it has not completed."""
        return self._sessions.unreachable_within(RECOVERY_CHECK_SECONDS) or self.due()

    async def sweep_if_due(self) -> int:
        """Sweep when :meth:`due`; the number of sessions ended. Raises ``ChannelgateError`` (store or database
        unreachable): the sweep stays due and the caller tries again at its next turn, and the records of sessions
        already ended are kept and written first then (nothing ended goes unrecorded)."""
        await self._write_records()
        if not self.due():
            return 0
        started = self._monotonic()
        cutoff = utcnow() - self._lifetime
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
        self._swept_at = started
        return ended

    async def _write_records(self) -> None:
        if self._unwritten:
            await self._audit.write(*self._unwritten)
            self._unwritten.clear()


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
