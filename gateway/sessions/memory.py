"""The embedded session store: in-process dictionaries for a single gateway replica.

Nothing survives a restart and nothing is shared, so it suits one node (development, small sites). It keeps the
same rules as the Redis store — SHA-256 keys, idle and absolute timeouts checked with the caller's clock,
single-use pending logins — and the contract suite holds both to them. Expired entries are purged as the store
is used, so memory stays bounded by the live sessions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from gateway.sessions.base import (
    MAX_PENDING_LOGINS,
    MAX_SESSIONS_PER_IDP_SESSION,
    RESYNC_AGENT_ID,
    Lookup,
    PendingLogin,
    Revocation,
    Session,
    SessionData,
    SessionState,
    UseClaim,
    UseState,
    new_session_id,
    session_key,
)

log = logging.getLogger(__name__)

#: How often (in seconds) a write sweeps out expired sessions and pending logins.
PURGE_INTERVAL_SECONDS = 60.0
#: Single-use keys (``claim_use``) remembered before expired ones are swept out.
_SEEN_PRUNE_AT = 10_000
#: What a used single-use key holds instead of its holder (a holder is a uuid4 hex).
_USED = "used"


def expiry_state(created_at: float, last_seen_at: float, now: float, idle: float, absolute: float) -> SessionState:
    """Whether a session is still valid at ``now`` (ASVS 7.3.1 idle, 7.3.2 absolute); the absolute limit wins."""
    if now - created_at >= absolute:
        return SessionState.ABSOLUTE_EXPIRED
    if now - last_seen_at >= idle:
        return SessionState.IDLE_EXPIRED
    return SessionState.VALID


@dataclass(slots=True)
class _Stored:
    data: SessionData
    created_at: float
    last_seen_at: float


class MemorySessionStore:
    """A ``SessionStore`` in this process only: the single replica is its own broadcast and its own ack."""

    def __init__(self, idle_timeout: float, absolute_timeout: float, replica_id: str) -> None:
        self.replica_id = replica_id
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self._sessions: dict[str, _Stored] = {}
        self._by_agent: dict[str, set[str]] = {}
        #: (iss, sid) → its sessions' keys, oldest first (a dict keeps insertion order), for a logout by ``sid``.
        self._by_idp_session: dict[tuple[str, str], dict[str, None]] = {}
        #: Oldest first (each is added once and expires after the same time), so eviction pops from the front.
        self._pending: OrderedDict[str, tuple[float, PendingLogin]] = OrderedDict()
        self._subscribers: set[asyncio.Queue[Revocation | None]] = set()
        #: Single-use key → (until, monotonic; its holder while claimed, ``_USED`` once used).
        self._seen: dict[str, tuple[float, str]] = {}
        self._last_purge = float("-inf")
        self._last_pending_purge = float("-inf")
        #: Pending logins kept at most, the oldest dropped first.
        self.max_pending_logins = MAX_PENDING_LOGINS
        #: Sessions one IdP session holds at most, the oldest ended first.
        self.max_sessions_per_idp_session = MAX_SESSIONS_PER_IDP_SESSION
        self._closed = False

    async def create(self, data: SessionData, now: float) -> Session:
        self._maybe_purge(now)
        session_id = new_session_id()
        key = session_key(session_id)
        self._sessions[key] = _Stored(data, now, now)
        self._by_agent.setdefault(data.agent_id, set()).add(key)
        if data.idp_session_id is not None:
            self._index_idp_session(key, (data.issuer, data.idp_session_id))
        return Session(session_id, data, now, now)

    def _index_idp_session(self, key: str, idp_session: tuple[str, str]) -> None:
        """Add a new session to its IdP session's index; past the cap, end the oldest of them (the new one is last,
        so never among them) and broadcast their end."""
        index = self._by_idp_session.setdefault(idp_session, {})
        index[key] = None
        excess = len(index) - self.max_sessions_per_idp_session
        if excess <= 0:
            return
        for oldest in list(itertools.islice(index, excess)):
            ended = self._remove(oldest)
            assert ended is not None, "every key in an IdP session's index is a stored session"
            self._broadcast_end(oldest, ended.data.agent_id)
        log.warning(
            "a login ended %d older session(s) of its IdP session: at most %d at once",
            excess, self.max_sessions_per_idp_session,
        )  # fmt: skip

    async def lookup(self, session_id: str, now: float) -> Lookup:
        key = session_key(session_id)
        stored = self._sessions.get(key)
        if stored is None:
            return Lookup(SessionState.MISSING)
        state = expiry_state(stored.created_at, stored.last_seen_at, now, self.idle_timeout, self.absolute_timeout)
        if state is not SessionState.VALID:
            self._remove(key)
            self._broadcast_end(key, stored.data.agent_id)
            return Lookup(state, data=stored.data)
        stored.last_seen_at = max(stored.last_seen_at, now)
        return Lookup(SessionState.VALID, Session(session_id, stored.data, stored.created_at, stored.last_seen_at))

    def held(self, session_id: str, now: float) -> Session | None:
        stored = self._sessions.get(session_key(session_id))
        if stored is None:
            return None
        state = expiry_state(stored.created_at, stored.last_seen_at, now, self.idle_timeout, self.absolute_timeout)
        if state is not SessionState.VALID:
            return None  # lookup() deletes it and broadcasts its end
        stored.last_seen_at = max(stored.last_seen_at, now)
        return Session(session_id, stored.data, stored.created_at, stored.last_seen_at)

    async def delete(self, session_id: str) -> SessionData | None:
        return await self.delete_key(session_key(session_id))

    async def delete_key(self, key: str) -> SessionData | None:
        stored = self._remove(key)
        if stored is None:
            return None
        self._broadcast_end(key, stored.data.agent_id)
        return stored.data

    def _broadcast_end(self, key: str, agent_id: str) -> None:
        """Tell this replica's listener that one session ended (its live connections are closed)."""
        ended = Revocation(agent_id, uuid.uuid4().hex, self.replica_id, refresh_only=True, ended_session=key)
        for queue in self._subscribers:
            queue.put_nowait(ended)

    async def revoke_agent(self, agent_id: str) -> tuple[int, Revocation]:
        if agent_id == RESYNC_AGENT_ID:
            raise ValueError("'*' is the resync marker, not an agent id")
        keys = self._by_agent.pop(agent_id, set())
        for key in keys:
            stored = self._sessions.pop(key, None)
            if stored is not None:
                self._unindex_idp_session(key, stored)
        revocation = Revocation(agent_id, uuid.uuid4().hex, self.replica_id)
        for queue in self._subscribers:
            queue.put_nowait(revocation)
        return len(keys), revocation

    async def revoke_agent_if_any(self, agent_id: str) -> tuple[int, Revocation | None]:
        if not self._by_agent.get(agent_id):
            self._by_agent.pop(agent_id, None)
            return 0, None
        return await self.revoke_agent(agent_id)

    async def revoke_agents(self, agent_ids: Sequence[str]) -> list[tuple[int, Revocation]]:
        if RESYNC_AGENT_ID in agent_ids:
            raise ValueError("'*' is the resync marker, not an agent id")
        return [await self.revoke_agent(agent_id) for agent_id in agent_ids]

    async def revoke_idp_session(self, agent_id: str, idp_session_id: str) -> tuple[int, Revocation | None]:
        keys = self._by_agent.get(agent_id, set())
        ended = {key for key in keys if self._sessions[key].data.idp_session_id == idp_session_id}
        if not ended:
            return 0, None
        for key in ended:
            self._unindex_idp_session(key, self._sessions.pop(key))
        keys -= ended
        if not keys:
            self._by_agent.pop(agent_id, None)
        revocation = Revocation(agent_id, uuid.uuid4().hex, self.replica_id)
        for queue in self._subscribers:
            queue.put_nowait(revocation)
        return len(ended), revocation

    async def claim_use(self, key: str, hold_seconds: int) -> UseClaim:
        now = time.monotonic()
        if len(self._seen) > _SEEN_PRUNE_AT:
            self._seen = {seen: entry for seen, entry in self._seen.items() if entry[0] > now}
        until, holder = self._seen.get(key, (0.0, ""))
        if until > now:
            return UseClaim(key, "", UseState.USED if holder == _USED else UseState.IN_PROGRESS)
        claim = UseClaim(key, uuid.uuid4().hex, UseState.CLAIMED)
        self._seen[key] = (now + hold_seconds, claim.holder)
        return claim

    async def confirm_use(self, claim: UseClaim, ttl_seconds: int) -> None:
        self._seen[claim.key] = (time.monotonic() + ttl_seconds, _USED)

    async def release_use(self, claim: UseClaim) -> None:
        if self._seen.get(claim.key, (0.0, ""))[1] == claim.holder:
            del self._seen[claim.key]

    async def update_agent_groups(self, agent_id: str, groups: frozenset[str]) -> int:
        # No await between the reads and the writes, so no lookup can run halfway through.
        keys = self._by_agent.get(agent_id, set())
        for key in keys:
            stored = self._sessions[key]
            stored.data = dataclasses.replace(stored.data, groups=frozenset(groups))
        return len(keys)

    async def sessions_of(self, agent_id: str, now: float) -> list[Session]:
        found = []
        for key in sorted(self._by_agent.get(agent_id, ())):
            stored = self._sessions[key]
            state = expiry_state(stored.created_at, stored.last_seen_at, now, self.idle_timeout, self.absolute_timeout)
            if state is SessionState.VALID:
                found.append(Session(key, stored.data, stored.created_at, stored.last_seen_at))
        return found

    async def sessions_of_idp_session(self, issuer: str, idp_session_id: str, now: float) -> list[Session]:
        found = []
        for key in sorted(self._by_idp_session.get((issuer, idp_session_id), ())):
            stored = self._sessions[key]
            state = expiry_state(stored.created_at, stored.last_seen_at, now, self.idle_timeout, self.absolute_timeout)
            if state is SessionState.VALID:
                found.append(Session(key, stored.data, stored.created_at, stored.last_seen_at))
        return found

    async def put_pending_login(self, login_id: str, pending: PendingLogin, ttl_seconds: int) -> None:
        now = time.monotonic()
        if now - self._last_pending_purge >= PURGE_INTERVAL_SECONDS:
            self._last_pending_purge = now
            self._pending = OrderedDict((key, entry) for key, entry in self._pending.items() if entry[0] > now)
        # At the cap (a /login flood) the oldest is dropped, O(1): rebuilding the whole table on every login once it
        # was full cost ~9 ms of the event loop a request.
        while len(self._pending) >= self.max_pending_logins:
            self._pending.popitem(last=False)
        self._pending[session_key(login_id)] = (now + ttl_seconds, pending)

    async def take_pending_login(self, login_id: str) -> PendingLogin | None:
        entry = self._pending.pop(session_key(login_id), None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    async def revocations(self, *, resync: bool = False) -> AsyncGenerator[Revocation, None]:
        # An in-process queue never drops, so there is a resync marker only when the caller asks for one.
        queue: asyncio.Queue[Revocation | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            if resync:
                yield Revocation(RESYNC_AGENT_ID, uuid.uuid4().hex, self.replica_id)
            while not self._closed:
                revocation = await queue.get()
                if revocation is None:
                    return
                yield revocation
        finally:
            self._subscribers.discard(queue)

    async def acknowledge(self, revocation: Revocation) -> None:
        """Nothing to send: the revoking replica is this one."""

    async def wait_for_acks(self, revocation: Revocation, timeout: float) -> tuple[set[str], set[str]]:  # noqa: ASYNC109
        """The only replica is the caller, which closed its own WebSockets before asking."""
        return {self.replica_id}, set()

    async def heartbeat(self) -> None:
        """Liveness is implied: a single replica cannot miss itself."""

    @property
    def clock_skewed(self) -> bool:
        return False

    def unreachable_within(self, seconds: float) -> bool:
        return False

    async def replicas_clock_shift(self) -> float | None:
        return 0.0

    async def verify_server(self) -> None:
        """Nothing to verify: the store is this process."""

    async def ping(self) -> None:
        """Always reachable: the store is this process."""

    async def close(self) -> None:
        """End every ``revocations()`` iterator; the data is left for the garbage collector."""
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(None)

    def _remove(self, key: str) -> _Stored | None:
        stored = self._sessions.pop(key, None)
        if stored is not None:
            keys = self._by_agent.get(stored.data.agent_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_agent[stored.data.agent_id]
            self._unindex_idp_session(key, stored)
        return stored

    def _unindex_idp_session(self, key: str, stored: _Stored) -> None:
        """Every path that ends a session comes here, so the index holds stored sessions only."""
        if stored.data.idp_session_id is None:
            return
        idp_session = (stored.data.issuer, stored.data.idp_session_id)
        index = self._by_idp_session.get(idp_session)
        if index is not None:
            index.pop(key, None)
            if not index:
                del self._by_idp_session[idp_session]

    def _maybe_purge(self, now: float) -> None:
        """Drop expired sessions at most once per ``PURGE_INTERVAL_SECONDS`` of caller time."""
        if now - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        expired = [
            key
            for key, stored in self._sessions.items()
            if expiry_state(stored.created_at, stored.last_seen_at, now, self.idle_timeout, self.absolute_timeout)
            is not SessionState.VALID
        ]
        for key in expired:
            self._remove(key)
