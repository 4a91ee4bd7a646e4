"""Sessions kept in process for a few seconds in front of the shared Redis store (``[sessions]
local_cache_seconds``; off by default).

Why: every request otherwise pays a Redis round trip to read its session (docs/benchmarks.md §8 shows what the
cache buys). What it costs, and why it is still safe:

* A revocation reaches a replica through the broadcast every replica already follows (gateway/app.py's listener).
  This wrapper drops the agent's cached sessions *before* the listener sees the revocation and acknowledges it,
  so when ``agents deprovision`` reports every replica's acknowledgement, no replica serves that agent from its
  cache any more. The revocation latency is the broadcast's (a few milliseconds), as without the cache.
* The cache serves only while this replica's subscription to the broadcast is confirmed
  (``RedisSessionStore.subscribed``); when it drops, everything cached is dropped and every lookup goes to Redis
  until the subscription is back (the store yields a resync marker, handled the same way).
* A subscription that dies without an error (a silently dropped TCP connection) is the one case a revocation
  could be missed: an entry is never served longer than ``local_cache_seconds`` after it was read from Redis, so
  that is the worst-case revocation latency of this setting. Keep it short (the default when on: 2 s).
* Logout and group changes are broadcast too (``refresh_only``, by RedisSessionStore itself, so a replica or CLI
  without the cache announces them as well), and another replica's copy goes at once: a group change still
  applies to the next request (ASVS 8.3.2), give or take the broadcast.
* A lookup whose Redis read was in flight when a drop happened does not keep what it read: the broadcast may have
  been handled, and acknowledged, before that caller resumed, so the read may predate the revocation, logout or
  group change. Each drop takes the next number of one sequence, kept per agent (the whole cache's for a clear);
  a read is kept only if no drop of its agent, and no clear, came after the number it saw when it started.
* Idle and absolute timeouts: the absolute one is checked on every hit; the idle clock in Redis is refreshed when
  an entry is read again, so an idle timeout can be late by at most ``local_cache_seconds``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from gateway.sessions.base import (
    Lookup,
    PendingLogin,
    Revocation,
    Session,
    SessionData,
    SessionState,
    UseClaim,
)
from gateway.sessions.redis_store import RedisSessionStore

#: Most sessions kept: a replica serving more live sessions than this reads the rest from Redis.
MAX_ENTRIES = 100_000


class CachedSessionStore:
    """A ``SessionStore`` that answers repeated lookups of a valid session from memory."""

    def __init__(self, inner: RedisSessionStore, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds
        self.replica_id = inner.replica_id
        self.idle_timeout = inner.idle_timeout
        self.absolute_timeout = inner.absolute_timeout
        #: session id → (session as read, the caller's clock when it was read)
        self._entries: dict[str, tuple[Session, float]] = {}
        self._by_agent: dict[str, set[str]] = {}
        #: The number of the last drop; agent id → the number of its last drop; the number of the last clear.
        self._drops = 0
        self._agent_dropped_at: dict[str, int] = {}
        self._cleared_at = 0
        self.hits = 0
        self.misses = 0

    # -- the cache ------------------------------------------------------------------------------------------

    def held(self, session_id: str, now: float) -> Session | None:
        # Not from memory while this replica's clock is outvoted (lookup() then refuses: ClockSkewed, 503) or its
        # subscription to the broadcast is unconfirmed (lookup() then clears the cache).
        if not self.inner.subscribed or self.inner.clock_skewed:
            return None
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        session, read_at = entry
        # Fresh, and still inside both timeouts as Redis would judge them (a clock that went back makes the entry
        # stale rather than longer-lived).
        if (
            read_at <= now < read_at + self.seconds
            and now < session.created_at + self.absolute_timeout
            and now < session.last_seen_at + self.idle_timeout
        ):
            self.hits += 1
            return session
        return None

    async def lookup(self, session_id: str, now: float) -> Lookup:
        session = self.held(session_id, now)
        if session is not None:
            return Lookup(SessionState.VALID, session)
        if self.inner.subscribed and not self.inner.clock_skewed:
            self._drop_session(session_id)
        else:
            self.clear()
        self.misses += 1
        started = self._drops
        found = await self.inner.lookup(session_id, now)
        if (
            found.state is SessionState.VALID
            and found.session is not None
            and self.inner.subscribed
            and self._cleared_at <= started
            and self._agent_dropped_at.get(found.session.data.agent_id, 0) <= started
        ):
            self._keep(found.session, now)
        return found

    def _keep(self, session: Session, now: float) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self.clear()
        self._entries[session.id] = (session, now)
        self._by_agent.setdefault(session.data.agent_id, set()).add(session.id)

    def _drop_session(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            ids = self._by_agent.get(entry[0].data.agent_id)
            if ids is not None:
                ids.discard(session_id)
                if not ids:
                    del self._by_agent[entry[0].data.agent_id]

    def drop_agent(self, agent_id: str) -> None:
        """Forget the agent's sessions, and what lookups in flight read of them (see the module's docstring)."""
        for session_id in self._by_agent.pop(agent_id, set()):
            self._entries.pop(session_id, None)
        self._drops += 1
        if len(self._agent_dropped_at) >= MAX_ENTRIES:
            self._cleared_at = self._drops  # as if everything was dropped now: bounds the memory this takes
            self._agent_dropped_at.clear()
        self._agent_dropped_at[agent_id] = self._drops

    def clear(self) -> None:
        self._entries.clear()
        self._by_agent.clear()
        self._drops += 1
        self._cleared_at = self._drops
        self._agent_dropped_at.clear()

    # -- writes: drop here, tell the others -------------------------------------------------------------------

    async def create(self, data: SessionData, now: float) -> Session:
        # Sessions it ends (past the cap of its IdP session) are broadcast, and dropped here as any other's end.
        return await self.inner.create(data, now)

    async def delete(self, session_id: str) -> SessionData | None:
        self._drop_session(session_id)
        data = await self.inner.delete(session_id)  # broadcasts a refresh for the agent
        if data is not None:
            self.drop_agent(data.agent_id)
        return data

    async def delete_key(self, key: str) -> SessionData | None:
        data = await self.inner.delete_key(key)  # broadcasts a refresh for the agent
        if data is not None:
            self.drop_agent(data.agent_id)  # its entry is kept by id, which the key does not give back
        return data

    async def revoke_agent(self, agent_id: str) -> tuple[int, Revocation]:
        self.drop_agent(agent_id)
        result = await self.inner.revoke_agent(agent_id)
        self.drop_agent(agent_id)  # a lookup that raced the revocation may have kept one meanwhile
        return result

    async def revoke_agent_if_any(self, agent_id: str) -> tuple[int, Revocation | None]:
        self.drop_agent(agent_id)
        result = await self.inner.revoke_agent_if_any(agent_id)
        self.drop_agent(agent_id)
        return result

    async def revoke_agents(self, agent_ids: Sequence[str]) -> list[tuple[int, Revocation]]:
        for agent_id in agent_ids:
            self.drop_agent(agent_id)
        results = await self.inner.revoke_agents(agent_ids)
        for agent_id in agent_ids:
            self.drop_agent(agent_id)
        return results

    async def revoke_idp_session(self, agent_id: str, idp_session_id: str) -> tuple[int, Revocation | None]:
        self.drop_agent(agent_id)
        result = await self.inner.revoke_idp_session(agent_id, idp_session_id)  # broadcast when one ended
        self.drop_agent(agent_id)
        return result

    async def update_agent_groups(self, agent_id: str, groups: frozenset[str]) -> int:
        count = await self.inner.update_agent_groups(agent_id, groups)  # broadcasts a refresh for the agent
        self.drop_agent(agent_id)
        return count

    async def revocations(self, *, resync: bool = False) -> AsyncGenerator[Revocation, None]:
        """The inner broadcast, with this replica's copies dropped before anyone sees (and acknowledges) it."""
        # Closed with this one, so its subscription (and ``subscribed``) ends at once, not when it is collected.
        async with aclosing(self.inner.revocations(resync=resync)) as feed:
            async for revocation in feed:
                if revocation.is_resync:
                    self.clear()
                else:
                    self.drop_agent(revocation.agent_id)
                yield revocation

    # -- the rest goes straight through ----------------------------------------------------------------------

    async def claim_use(self, key: str, hold_seconds: int) -> UseClaim:
        return await self.inner.claim_use(key, hold_seconds)

    async def confirm_use(self, claim: UseClaim, ttl_seconds: int) -> None:
        await self.inner.confirm_use(claim, ttl_seconds)

    async def release_use(self, claim: UseClaim) -> None:
        await self.inner.release_use(claim)

    async def sessions_of(self, agent_id: str, now: float) -> list[Session]:
        return await self.inner.sessions_of(agent_id, now)

    async def sessions_of_idp_session(self, issuer: str, idp_session_id: str, now: float) -> list[Session]:
        """Always Redis's index: a logout by ``sid`` must find sessions this replica never read."""
        return await self.inner.sessions_of_idp_session(issuer, idp_session_id, now)

    async def put_pending_login(self, login_id: str, pending: PendingLogin, ttl_seconds: int) -> None:
        await self.inner.put_pending_login(login_id, pending, ttl_seconds)

    async def take_pending_login(self, login_id: str) -> PendingLogin | None:
        return await self.inner.take_pending_login(login_id)

    async def acknowledge(self, revocation: Revocation) -> None:
        await self.inner.acknowledge(revocation)

    async def wait_for_acks(self, revocation: Revocation, timeout: float) -> tuple[set[str], set[str]]:  # noqa: ASYNC109
        return await self.inner.wait_for_acks(revocation, timeout)

    async def heartbeat(self) -> None:
        await self.inner.heartbeat()

    async def verify_server(self) -> None:
        await self.inner.verify_server()

    async def ping(self) -> None:
        await self.inner.ping()

    @property
    def clock_skewed(self) -> bool:
        return self.inner.clock_skewed

    def unreachable_within(self, seconds: float) -> bool:
        return self.inner.unreachable_within(seconds)

    async def replicas_clock_shift(self) -> float | None:
        return await self.inner.replicas_clock_shift()

    async def close(self) -> None:
        self.clear()
        await self.inner.close()
