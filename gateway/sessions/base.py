"""The session-store protocol shared by the embedded and the Redis store.

Session ids are opaque 256-bit values from ``secrets`` (ASVS 7.2.3 asks ≥ 128 bits). Stores keep only the
SHA-256 of an id, so a dump of the store yields no usable cookie. Idle and absolute timeouts (ASVS 7.3.1/7.3.2)
are enforced by the store on every read, with the clock passed in by the caller so tests can freeze it.
Every method raises ``SessionStoreUnavailable`` when the backend cannot be reached: the gateway then answers
503 and never lets a request pass (fail closed).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

SESSION_ID_BYTES = 32
#: Pending logins a store keeps at most; beyond it the oldest go first, so a flood of unfinished logins cannot fill
#: the memory (or the Redis) that holds every session.
MAX_PENDING_LOGINS = 100_000
#: Gateway sessions one IdP session (``iss``, ``sid``) holds at once; a login beyond ends the oldest of them (ASVS 5.0
#: 7.1.2). Their index is how a logout token naming only ``sid`` finds them (OIDC Back-Channel Logout 1.0 §2.4), so
#: it is bounded by ending sessions, never by forgetting one: a forgotten one would outlive the IdP's logout.
MAX_SESSIONS_PER_IDP_SESSION = 1_000


def new_session_id() -> str:
    """A fresh opaque id: 256 bits from the OS CSPRNG, URL-safe."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def session_key(session_id: str) -> str:
    """The storage key of a session id: its SHA-256, so stored keys are not bearer credentials."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionData:
    """What a logged-in session knows about its agent (all taken from the validated ID token)."""

    agent_id: str
    user_name: str
    issuer: str
    subject: str
    groups: frozenset[str] = frozenset()
    #: The IdP session id (``sid``), for back-channel logout (OIDC Back-Channel Logout 1.0 §2.4).
    idp_session_id: str | None = None
    #: Kept for RP-initiated logout's ``id_token_hint``; never sent upstream or logged.
    id_token: str | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: float | None = None
    #: The saved agent-wide and IdP-session ends (``gateway.storage.session_ends.saved_key``: row id and time)
    #: committed before this session was created: their kills ran before it existed, so the sweep after a session-store
    #: outage never ends it for them (a login within the clock margin after such an end would otherwise be ended at
    #: every replica start; gateway/deprovision/revived.py). Set by the login, never changed afterwards.
    after_ends: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    data: SessionData
    created_at: float
    last_seen_at: float


class SessionState(Enum):
    VALID = "valid"
    MISSING = "missing"
    IDLE_EXPIRED = "idle_expired"
    ABSOLUTE_EXPIRED = "absolute_expired"


@dataclass(frozen=True, slots=True)
class Lookup:
    """The result of reading a session: the session when valid, otherwise why not (for the access log)."""

    state: SessionState
    session: Session | None = None
    #: For expired sessions: the agent it belonged to, so the expiry can be audited.
    data: SessionData | None = None


#: ``Revocation.agent_id`` of the resync marker: the broadcast channel dropped and came back, so revocations
#: may have been missed meanwhile; every open WebSocket must be re-checked against the store. Never acknowledged.
RESYNC_AGENT_ID = "*"


@dataclass(frozen=True, slots=True)
class Revocation:
    """A broadcast telling every replica that these agents' sessions are gone (close their WebSockets).

    A revocation whose ``agent_id`` is ``RESYNC_AGENT_ID`` is not a broadcast but a local resync marker that
    ``SessionStore.revocations()`` yields after it reconnected (see ``is_resync``).
    """

    agent_id: str
    #: Unique id of this revocation, echoed in each replica's acknowledgement.
    revocation_id: str
    origin_replica: str
    #: Not a revocation: the agent's sessions changed (logout, new groups); replicas that keep sessions in
    #: process (gateway/sessions/local_cache.py) drop theirs and read them again. Never acknowledged.
    refresh_only: bool = False
    #: The storage key (``session_key``) of the one session that ended, by logout or by a lookup that found it
    #: expired: every replica closes that session's WebSockets and streamed responses, and only those (ASVS 7.4.1).
    #: Sent as a refresh (``refresh_only``), so caches drop the agent's copies; never acknowledged.
    ended_session: str | None = None

    @property
    def is_resync(self) -> bool:
        """True for the marker yielded after the broadcast channel reconnected (revocations may be lost)."""
        return self.agent_id == RESYNC_AGENT_ID


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """OIDC request state bound to the browser by a short-lived cookie (ASVS 10.1.2, RFC 9700 §2.1)."""

    state: str
    nonce: str
    code_verifier: str
    return_to: str
    created_at: float = field(default=0.0)


class UseState(Enum):
    """Where a single-use key (a logout token's or a SET's ``jti``) stands when a request claims it."""

    #: Nobody held it: this request acts on it, then confirms or releases it.
    CLAIMED = "claimed"
    #: Another request holds it and has not finished: not a replay yet, the sender should try again.
    IN_PROGRESS = "in_progress"
    #: Its effect committed: a replay.
    USED = "used"


@dataclass(frozen=True, slots=True)
class UseClaim:
    """The answer of ``SessionStore.claim_use``; ``holder`` names this claim, so a late release frees no other."""

    key: str
    holder: str
    state: UseState


class SessionStore(Protocol):
    """Where sessions live. All timestamps are seconds since the epoch, supplied by the caller."""

    replica_id: str

    async def create(self, data: SessionData, now: float) -> Session:
        """Store a new session under a fresh id (a new id at every login, ASVS 7.2.4), indexed by its IdP session
        when it has one; beyond ``MAX_SESSIONS_PER_IDP_SESSION`` of them the oldest ends (its end broadcast as
        :meth:`delete` does)."""
        ...

    async def lookup(self, session_id: str, now: float) -> Lookup:
        """Read a session; refresh its idle clock. One found idle or past its absolute lifetime is deleted and its
        end broadcast as :meth:`delete` does (only by the lookup that found it so)."""
        ...

    def held(self, session_id: str, now: float) -> Session | None:
        """The session, if this process holds it valid in memory (as :meth:`lookup` would answer, with the same
        idle-clock refresh) and can vouch for it without any I/O; None means "ask :meth:`lookup`", never "gone".
        The forward-auth listener answers from it inside a parser callback (gateway/forward_auth_protocol.py)."""
        ...

    async def delete(self, session_id: str) -> SessionData | None:
        """End one session (logout) and broadcast its end (``Revocation.ended_session``), so every replica closes
        its live connections. Returns what it held, or None if it did not exist (nothing is broadcast then)."""
        ...

    async def delete_key(self, key: str) -> SessionData | None:
        """:meth:`delete` of the session stored under ``key`` (``session_key``): how a logout remembered in the
        database, which never holds the id, is ended again after a restarted Redis brought it back
        (gateway/deprovision/revived.py)."""
        ...

    async def revoke_agent(self, agent_id: str) -> tuple[int, Revocation]:
        """End every session of one agent on every replica and broadcast the revocation.

        Returns the number of sessions removed and the broadcast revocation.
        """
        ...

    async def revoke_agent_if_any(self, agent_id: str) -> tuple[int, Revocation | None]:
        """:meth:`revoke_agent`, broadcasting only when a session ended (None otherwise): the kill after a
        deprovisioning's disable, whose first kill was broadcast already (``gateway/deprovision/kill.py``)."""
        ...

    async def revoke_agents(self, agent_ids: Sequence[str]) -> list[tuple[int, Revocation]]:
        """:meth:`revoke_agent` for several agents in one round trip to the store (a deprovisioning storm's
        first kills, ``gateway/deprovision/first_kills.py``); the results in ``agent_ids``' order."""
        ...

    async def revoke_idp_session(self, agent_id: str, idp_session_id: str) -> tuple[int, Revocation | None]:
        """End the agent's sessions that came from one IdP session (OIDC Back-Channel Logout 1.0 §2.4 ``sid``) on
        every replica. Broadcasts a revocation for the agent only when a session ended (replicas then close the
        agent's open WebSockets, which reconnect if another of the agent's sessions is still valid)."""
        ...

    async def sessions_of_idp_session(self, issuer: str, idp_session_id: str, now: float) -> list[Session]:
        """The live sessions, of whichever agent, that came from one IdP session (``iss``, ``sid``), by storage key
        as :meth:`sessions_of` lists them: how a logout token naming ``sid`` without ``sub`` finds the sessions to
        end (OIDC Back-Channel Logout 1.0 §2.4). Read from an index written with each session and emptied as
        sessions end (logout, revocation, expiry), so no scan of every session."""
        ...

    async def claim_use(self, key: str, hold_seconds: int) -> UseClaim:
        """Hold a single-use ``key`` for ``hold_seconds`` on every replica, unless another request holds it or it
        was used (the replay guard of ``gateway/sessions/single_use.py``). A hold that is neither confirmed nor
        released (the process died) lapses by itself, so the sender's retry is served."""
        ...

    async def confirm_use(self, claim: UseClaim, ttl_seconds: int) -> None:
        """Mark the claimed key used for ``ttl_seconds``: its effect committed, so from now on it is a replay."""
        ...

    async def release_use(self, claim: UseClaim) -> None:
        """Free the claimed key (its action failed, nothing took effect), unless another request holds it now."""
        ...

    async def update_agent_groups(self, agent_id: str, groups: frozenset[str]) -> int:
        """Replace the groups of every live session of the agent; returns how many sessions were updated.

        ASVS 8.3.2: a directory change (SCIM, LDAP) applies on the agent's very next request on every replica,
        with no directory read on the hot path. Atomic: a concurrent lookup sees the old groups or the new ones.
        Timestamps are kept, so an update never revives or extends a session (one past its timeout but not yet
        collected may be counted; it stays expired).
        """
        ...

    async def sessions_of(self, agent_id: str, now: float) -> list[Session]:
        """The live sessions of an agent (admin views, tests).

        The raw ids are never stored, so each ``Session.id`` here is the storage key (``session_key``).
        """
        ...

    async def put_pending_login(self, login_id: str, pending: PendingLogin, ttl_seconds: int) -> None: ...

    async def take_pending_login(self, login_id: str) -> PendingLogin | None:
        """Return and delete the pending login (single use: a replayed callback finds nothing)."""
        ...

    def revocations(self, *, resync: bool = False) -> AsyncGenerator[Revocation, None]:
        """Every revocation broadcast by any replica (including this one), as it arrives.

        After the channel dropped and came back this yields a resync marker (``Revocation.is_resync``); with
        ``resync`` also once the first subscription is confirmed (a listener started again after it failed: what
        was broadcast meanwhile is lost). Close it (``aclose``) to release its subscription.
        """
        ...

    async def acknowledge(self, revocation: Revocation) -> None:
        """Tell the revoking replica this replica has closed that agent's connections."""
        ...

    async def wait_for_acks(self, revocation: Revocation, timeout: float) -> tuple[set[str], set[str]]:  # noqa: ASYNC109
        """Wait until every live replica acknowledged; returns (acknowledged, missing) replica ids."""
        ...

    async def heartbeat(self) -> None:
        """Mark this replica alive (live replicas are those expected to acknowledge revocations). Timed by the
        store's clock, never the replica's: a replica whose clock is behind is still waited for."""
        ...

    async def verify_server(self) -> None:
        """At start: raise ConfigError if the backend is set up so that it can lose what ends access (a Redis that
        may evict keys: gateway/sessions/redis_eviction.py). An unreachable backend is not refused here: it shows
        on first use (503), and the heartbeat checks once it answers."""
        ...

    async def ping(self) -> None:
        """Raise SessionStoreUnavailable unless the backend answers, ConfigError while :meth:`verify_server` would
        refuse it (readiness)."""
        ...

    @property
    def clock_skewed(self) -> bool:
        """Whether this replica's clock was outvoted by the other replicas' and the store's (gateway/sessions/
        redis_clock.py): lookups and logins are refused meanwhile, and open connections, whose session cannot be
        checked, are closed. The embedded store is never: its one process decides every timeout."""
        ...

    async def replicas_clock_shift(self) -> float | None:
        """Seconds to add to this host's clock to read the serving replicas' clock, for a process that is not a
        replica, or one the vote outvoted (the end a kill saves is stamped with it: gateway/deprovision/endings.py). 0
        for the embedded store (its one process stamps everything); None when the store does not answer."""
        ...

    def unreachable_within(self, seconds: float) -> bool:
        """Whether the backend failed to answer in the last ``seconds`` (the embedded store never does).

        After an outage a restarted Redis can bring back sessions that a deprovisioning made during the outage
        could not end yet; while this is true, the gateway also checks the agent in the database on each request.
        """
        ...

    async def close(self) -> None: ...
