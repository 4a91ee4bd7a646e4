"""The shared session store on Redis: every replica sees every session and every revocation.

Keys and scripts: ``gateway/sessions/redis_scripts.py``; the JSON written: ``gateway/sessions/redis_codec.py``.

The timeouts are decided by the caller's clock inside Lua scripts, one round trip per request; the Redis TTL only
collects garbage (its grace lets a late lookup still name why a session ended). Replica liveness is timed by
Redis's clock alone (heartbeats are scored and read with ``TIME``). The scripts touch keys derived
from what they read, so this store wants a single Redis (or a replicated primary, found through Sentinel by
``redis_client``), not Redis Cluster. Every failure becomes ``SessionStoreUnavailable`` after at most
``socket_timeout``: the gateway fails closed, and the connection pool reconnects by itself once Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.errors import ConfigError, SessionStoreUnavailable
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
from gateway.sessions.redis_acks import AckCollector
from gateway.sessions.redis_batches import ScriptBatches
from gateway.sessions.redis_clock import DEFAULT_MAX_CLOCK_SKEW_SECONDS
from gateway.sessions.redis_codec import decode_data, encode_data, encode_revocation
from gateway.sessions.redis_scripts import (
    ACK_PREFIX,
    ACK_SCRIPT,
    ACK_TTL_SECONDS,
    ACKS_TO_PREFIX,
    AGENT_PREFIX,
    CLAIM_ONCE_SCRIPT,
    CREATE_SCRIPT,
    DELETE_SCRIPT,
    HEARTBEAT_SCRIPT,
    IDP_SESSIONS_SCRIPT,
    LIVE_REPLICAS_SCRIPT,
    LOGIN_PREFIX,
    LOGINS_KEY,
    LOOKUP_SCRIPT,
    ONCE_PREFIX,
    ONCE_USED,
    PUT_PENDING_LOGIN_SCRIPT,
    RELEASE_ONCE_SCRIPT,
    REPLICAS_KEY,
    REVOCATION_CHANNEL,
    REVOKE_IDP_SESSION_SCRIPT,
    REVOKE_SCRIPT,
    SESSION_PREFIX,
    SESSIONS_OF_SCRIPT,
    UPDATE_GROUPS_SCRIPT,
    idp_session_index,
)
from gateway.sessions.redis_server_checks import ServerChecks
from gateway.sessions.redis_subscription import RevocationSubscription

log = logging.getLogger(__name__)

T = TypeVar("T")

UNAVAILABLE = "the session store (Redis) is unreachable; requests are refused until it is back"
#: A lookup this close to the session's ``seen`` leaves it (and the TTLs) as they are (``LOOKUP_SCRIPT``): far below
#: any idle timeout, so a session idles out at most this much early; a busy session is written once a second.
LOOKUP_TOUCH_SECONDS = 1.0


class RedisSessionStore:
    """A ``SessionStore`` shared by every replica through one Redis."""

    def __init__(
        self,
        redis: str | Redis,
        idle_timeout: float,
        absolute_timeout: float,
        replica_id: str,
        *,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        health_check_interval: int = 5,
        liveness_seconds: float = 15.0,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
        expiry_grace_seconds: float = 60.0,
        wait_for_replicas: int = 0,
        wait_for_replicas_timeout: float = 0.5,
        close_also: Callable[[], Awaitable[None]] | None = None,
        on_eviction_unsafe: Callable[[], None] | None = None,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``redis`` is a URL or a client built by ``gateway.sessions.redis_client`` (TLS, Sentinel), whose
        ``socket_timeout`` must be the one given here; ``close_also`` closes what that client needs beside it;
        ``on_eviction_unsafe`` is called each time Redis is found set to evict keys (a metric); ``wall_clock`` is
        this host's clock, compared with Redis's (gateway/sessions/redis_clock.py)."""
        self.replica_id = replica_id
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.liveness_seconds = liveness_seconds
        self.expiry_grace_seconds = expiry_grace_seconds
        #: Redis replicas that must hold a write that ends or narrows access before it counts as done (WAIT).
        self._wait_replicas = wait_for_replicas
        self._wait_timeout = wait_for_replicas_timeout
        #: The read of the live replicas in flight, shared by the acknowledgement waits that start meanwhile.
        self._live_read: asyncio.Future[Any] | None = None
        self._close_also = close_also
        self._closed = False
        #: When Redis last failed to answer (monotonic), for ``unreachable_within``.
        self._unreachable_at: float | None = None
        if not isinstance(redis, str):
            self._redis: Redis = redis
        else:
            try:
                # No client-side retries: one failed attempt is reported at once (fail closed, fast). The pool
                # reconnects on the next call, so the store recovers by itself when Redis is back.
                self._redis = Redis.from_url(
                    redis,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=connect_timeout,
                    health_check_interval=health_check_interval,
                    retry=Retry(NoBackoff(), 0),
                    decode_responses=True,
                )
            except ValueError:
                raise ConfigError("sessions.redis_url is not a Redis URL (redis://, rediss:// or unix://)") from None
        #: The Redis server's replication, eviction policy and this host's clock, checked at start, at each
        #: heartbeat and readiness probe.
        self._checks = ServerChecks(
            self._redis, replica_id, liveness_seconds=liveness_seconds, wait_for_replicas=wait_for_replicas,
            on_eviction_unsafe=on_eviction_unsafe, max_clock_skew=max_clock_skew, wall_clock=wall_clock,
        )  # fmt: skip
        self._create = self._redis.register_script(CREATE_SCRIPT)
        self._lookup = self._redis.register_script(LOOKUP_SCRIPT)
        #: Lookups of one event-loop turn go to Redis in one round trip (gateway/sessions/redis_batches.py).
        self._lookups = ScriptBatches(self._redis, self._lookup)
        #: Acknowledgements of one event-loop turn, likewise in one round trip.
        self._acks = ScriptBatches(self._redis, self._redis.register_script(ACK_SCRIPT))
        # Each blocking read waits far less than the socket timeout, so a slow answer is never mistaken for a dead
        # Redis: its reply must also be read by this event loop, which a deprovisioning storm keeps busy, and the
        # socket timeout minus the slice is all the delay that reading may take (half of it was exceeded under load).
        self._ack_collector = AckCollector(
            self._redis,
            ACKS_TO_PREFIX + replica_id,
            slice_seconds=max(0.01, min(0.1, socket_timeout / 4)),
            keep_seconds=ACK_TTL_SECONDS,
            call=self._call,
        )
        self._subscription = RevocationSubscription(
            self._redis, replica_id, socket_timeout=socket_timeout, reconnect_backoff=reconnect_backoff,
            on_lost=self._lost,
        )  # fmt: skip
        self._delete = self._redis.register_script(DELETE_SCRIPT)
        self._revoke = self._redis.register_script(REVOKE_SCRIPT)
        self._revoke_idp_session = self._redis.register_script(REVOKE_IDP_SESSION_SCRIPT)
        self._sessions_of = self._redis.register_script(SESSIONS_OF_SCRIPT)
        self._idp_sessions = self._redis.register_script(IDP_SESSIONS_SCRIPT)
        #: Sessions one IdP session holds at most, the oldest ended first (as the embedded store).
        self.max_sessions_per_idp_session = MAX_SESSIONS_PER_IDP_SESSION
        self._update_groups = self._redis.register_script(UPDATE_GROUPS_SCRIPT)
        self._heartbeat = self._redis.register_script(HEARTBEAT_SCRIPT)
        self._live_replicas_script = self._redis.register_script(LIVE_REPLICAS_SCRIPT)
        self._claim_once = self._redis.register_script(CLAIM_ONCE_SCRIPT)
        self._put_pending_login = self._redis.register_script(PUT_PENDING_LOGIN_SCRIPT)
        #: Pending logins kept at most, the oldest dropped first (as the embedded store).
        self.max_pending_logins = MAX_PENDING_LOGINS
        self._release_once = self._redis.register_script(RELEASE_ONCE_SCRIPT)

    async def create(self, data: SessionData, now: float) -> Session:
        self._refuse_if_clock_skewed()
        session_id = new_session_id()
        key = session_key(session_id)
        ttl = min(self.idle_timeout, self.absolute_timeout) + self.expiry_grace_seconds
        index_ttl = self.absolute_timeout + self.expiry_grace_seconds
        keys = [SESSION_PREFIX + key, AGENT_PREFIX + data.agent_id]
        if data.idp_session_id is not None:
            keys.append(idp_session_index(data.issuer, data.idp_session_id))
        ended = await self._call(
            self._create(
                keys=keys,
                args=[encode_data(data), data.agent_id, repr(now), int(ttl * 1000), int(index_ttl) + 1, key,
                      SESSION_PREFIX, AGENT_PREFIX, self.max_sessions_per_idp_session],
            )
        )  # fmt: skip
        for i in range(0, len(ended), 2):  # the oldest sessions of its IdP session, past the cap
            await self._publish_end(ended[i], ended[i + 1])
        if ended:
            log.warning(
                "a login ended %d older session(s) of its IdP session: at most %d at once",
                len(ended) // 2, self.max_sessions_per_idp_session,
            )  # fmt: skip
        return Session(session_id, data, now, now)

    def held(self, session_id: str, now: float) -> Session | None:
        return None  # every lookup reads Redis (``[sessions] local_cache_seconds`` keeps copies in process)

    async def lookup(self, session_id: str, now: float) -> Lookup:
        self._refuse_if_clock_skewed()
        key = session_key(session_id)
        args: list[str | float] = [
            repr(now), self.idle_timeout, self.absolute_timeout, self.expiry_grace_seconds, AGENT_PREFIX, key,
            LOOKUP_TOUCH_SECONDS,
        ]  # fmt: skip
        reply = await self._call(self._lookups.run([SESSION_PREFIX + key], args))
        state = SessionState(reply[0])
        if state is SessionState.MISSING:
            return Lookup(state)
        data = decode_data(reply[1])
        if state is not SessionState.VALID:
            # The script deleted it, once: this lookup alone tells the replicas to close its connections.
            await self._publish_end(key, data.agent_id)
            return Lookup(state, data=data)
        return Lookup(state, Session(session_id, data, float(reply[2]), float(reply[3])))

    async def delete(self, session_id: str) -> SessionData | None:
        return await self.delete_key(session_key(session_id))

    async def delete_key(self, key: str) -> SessionData | None:
        (raw,) = await self._replicated([(self._delete, [SESSION_PREFIX + key], [AGENT_PREFIX, key])])
        if raw is None:
            return None
        data = decode_data(raw)
        # Every replica closes the session's connections; those that keep sessions in process drop the agent's
        # copies (gateway/sessions/local_cache.py).
        await self._publish_end(key, data.agent_id)
        return data

    async def revoke_agent(self, agent_id: str) -> tuple[int, Revocation]:
        if agent_id == RESYNC_AGENT_ID:
            raise ValueError("'*' is the resync marker, not an agent id")
        revocation = Revocation(agent_id, uuid.uuid4().hex, self.replica_id)
        args = [SESSION_PREFIX, REVOCATION_CHANNEL, encode_revocation(revocation)]
        (count,) = await self._replicated([(self._revoke, [AGENT_PREFIX + agent_id], args)])
        return int(count), revocation

    async def revoke_agent_if_any(self, agent_id: str) -> tuple[int, Revocation | None]:
        if agent_id == RESYNC_AGENT_ID:
            raise ValueError("'*' is the resync marker, not an agent id")
        revocation = Revocation(agent_id, uuid.uuid4().hex, self.replica_id)
        args = [SESSION_PREFIX, REVOCATION_CHANNEL, encode_revocation(revocation), "if-any"]
        (reply,) = await self._replicated([(self._revoke, [AGENT_PREFIX + agent_id], args)])
        count = int(reply)
        return count, (revocation if count else None)

    async def revoke_agents(self, agent_ids: Sequence[str]) -> list[tuple[int, Revocation]]:
        if RESYNC_AGENT_ID in agent_ids:
            raise ValueError("'*' is the resync marker, not an agent id")
        revocations = [Revocation(agent_id, uuid.uuid4().hex, self.replica_id) for agent_id in agent_ids]
        # One round trip, not a transaction: each script is atomic on its own, as revoke_agent's is.
        counts = await self._replicated(
            [
                (self._revoke, [AGENT_PREFIX + r.agent_id], [SESSION_PREFIX, REVOCATION_CHANNEL, encode_revocation(r)])
                for r in revocations
            ]
        )
        return [(int(count), revocation) for count, revocation in zip(counts, revocations, strict=True)]

    async def revoke_idp_session(self, agent_id: str, idp_session_id: str) -> tuple[int, Revocation | None]:
        revocation = Revocation(agent_id, uuid.uuid4().hex, self.replica_id)
        args = [SESSION_PREFIX, REVOCATION_CHANNEL, encode_revocation(revocation), idp_session_id]
        (reply,) = await self._replicated([(self._revoke_idp_session, [AGENT_PREFIX + agent_id], args)])
        count = int(reply)
        return count, (revocation if count else None)

    async def publish_refresh(self, agent_id: str) -> None:
        """Tell every replica that this agent's sessions changed (a ``refresh_only`` broadcast)."""
        message = encode_revocation(Revocation(agent_id, uuid.uuid4().hex, self.replica_id, refresh_only=True))
        await self._call(self._redis.publish(REVOCATION_CHANNEL, message))

    async def _publish_end(self, key: str, agent_id: str) -> None:
        """Tell every replica that one session ended (``Revocation.ended_session``, sent as a refresh)."""
        ended = Revocation(agent_id, uuid.uuid4().hex, self.replica_id, refresh_only=True, ended_session=key)
        await self._call(self._redis.publish(REVOCATION_CHANNEL, encode_revocation(ended)))

    async def claim_use(self, key: str, hold_seconds: int) -> UseClaim:
        holder = uuid.uuid4().hex
        held = await self._call(
            self._claim_once(keys=[ONCE_PREFIX + session_key(key)], args=[holder, hold_seconds * 1000])
        )
        if held == holder:
            return UseClaim(key, holder, UseState.CLAIMED)
        return UseClaim(key, "", UseState.USED if held == ONCE_USED else UseState.IN_PROGRESS)

    async def confirm_use(self, claim: UseClaim, ttl_seconds: int) -> None:
        await self._call(self._redis.set(ONCE_PREFIX + session_key(claim.key), ONCE_USED, ex=ttl_seconds))

    async def release_use(self, claim: UseClaim) -> None:
        await self._call(self._release_once(keys=[ONCE_PREFIX + session_key(claim.key)], args=[claim.holder]))

    async def update_agent_groups(self, agent_id: str, groups: frozenset[str]) -> int:
        """One script over the agent's index, so every replica's next lookup sees the new groups, never a mix."""
        array = json.dumps(sorted(groups), separators=(",", ":"))
        (count,) = await self._replicated([(self._update_groups, [AGENT_PREFIX + agent_id], [SESSION_PREFIX, array])])
        if count:
            await self.publish_refresh(agent_id)
        return int(count)

    async def sessions_of(self, agent_id: str, now: float) -> list[Session]:
        return await self._live_sessions(self._sessions_of, AGENT_PREFIX + agent_id, now)

    async def sessions_of_idp_session(self, issuer: str, idp_session_id: str, now: float) -> list[Session]:
        return await self._live_sessions(self._idp_sessions, idp_session_index(issuer, idp_session_id), now)

    async def _live_sessions(self, script: AsyncScript, index: str, now: float) -> list[Session]:
        """The live sessions an index lists (SESSIONS_OF_SCRIPT, IDP_SESSIONS_SCRIPT), by storage key."""
        args: list[str | float] = [SESSION_PREFIX, repr(now), self.idle_timeout, self.absolute_timeout]
        flat = await self._call(script(keys=[index], args=args))
        found = [
            Session(flat[i], decode_data(flat[i + 1]), float(flat[i + 2]), float(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]
        return sorted(found, key=lambda session: session.id)

    async def put_pending_login(self, login_id: str, pending: PendingLogin, ttl_seconds: int) -> None:
        value = json.dumps(
            {
                "state": pending.state,
                "nonce": pending.nonce,
                "code_verifier": pending.code_verifier,
                "return_to": pending.return_to,
                "created_at": pending.created_at,
            }
        )
        key = LOGIN_PREFIX + session_key(login_id)
        await self._call(
            self._put_pending_login(keys=[key, LOGINS_KEY], args=[value, ttl_seconds, self.max_pending_logins])
        )

    async def take_pending_login(self, login_id: str) -> PendingLogin | None:
        raw = await self._call(self._redis.getdel(LOGIN_PREFIX + session_key(login_id)))
        if raw is None:
            return None
        value = json.loads(raw)
        return PendingLogin(
            value["state"], value["nonce"], value["code_verifier"], value["return_to"], value["created_at"]
        )

    async def revocations(self, *, resync: bool = False) -> AsyncGenerator[Revocation, None]:
        """Follow the broadcast channel for as long as the store is open (gateway/sessions/redis_subscription.py)."""
        async for revocation in self._subscription.follow(resync=resync):
            yield revocation

    @property
    def subscribed(self) -> bool:
        """True while this replica's broadcast subscription is confirmed; an in-process session cache serves only
        then (gateway/sessions/local_cache.py), since a revocation published meanwhile would not reach it."""
        return self._subscription.subscribed

    @subscribed.setter
    def subscribed(self, value: bool) -> None:
        self._subscription.subscribed = value

    async def acknowledge(self, revocation: Revocation) -> None:
        keys = [ACKS_TO_PREFIX + revocation.origin_replica, ACK_PREFIX + revocation.revocation_id]
        args = [f"{revocation.revocation_id} {self.replica_id}", ACK_TTL_SECONDS, self.replica_id]
        await self._call(self._acks.run(keys, args))

    async def wait_for_acks(self, revocation: Revocation, timeout: float) -> tuple[set[str], set[str]]:  # noqa: ASYNC109
        """Collect acknowledgements until every replica with a recent heartbeat answered or ``timeout`` passed."""
        live = await self._live_replicas()
        acked = await self._ack_collector.wait(revocation.revocation_id, live, timeout)
        if not live <= acked:
            # A replica of an earlier release acknowledges on the revocation's own list only (a rolling upgrade).
            legacy = await self._call(self._redis.lrange(ACK_PREFIX + revocation.revocation_id, 0, -1))
            acked |= {str(replica) for replica in legacy}
        return acked, live - acked

    async def _live_replicas(self) -> set[str]:
        """The replicas with a recent heartbeat. Concurrent callers share the read in flight: in a storm fifty calls
        ask at once, and each would take a connection of its own from the pool — opened for the occasion, or idle
        long enough to be PINGed first — on the event loop that is ending the storm's sessions (measured: ~17 ms of
        that loop in the first storm, docs/benchmarks.md §9)."""
        reading = self._live_read
        if reading is None or reading.done():
            reading = self._live_read = asyncio.ensure_future(
                self._call(self._live_replicas_script(keys=[REPLICAS_KEY], args=[self.liveness_seconds]))
            )
            # Retrieved here too, so a read whose callers all went away never logs "exception never retrieved".
            reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        return {str(replica) for replica in await asyncio.shield(reading)}

    async def heartbeat(self) -> None:
        """Scored with Redis's clock (``HEARTBEAT_SCRIPT``), as ``_live_replicas`` reads it."""
        await self._follow_primary()
        await self._call(self._heartbeat(keys=[REPLICAS_KEY], args=[self.replica_id, self.liveness_seconds]))
        await self._checks.at_heartbeat()

    @property
    def clock_skewed(self) -> bool:
        """Whether this replica's clock was last outvoted (sessions are refused while it is)."""
        return self._checks.clock_skewed

    def _refuse_if_clock_skewed(self) -> None:
        self._checks.refuse_if_clock_skewed()

    async def verify_server(self) -> None:
        """Refuse a Redis that may evict keys, and a clock the other replicas' and Redis's outvote
        (gateway/sessions/redis_server_checks.py)."""
        await self._checks.at_start()

    async def ping(self) -> None:
        """Also not ready while Redis may evict keys or this replica's clock is outvoted."""
        await self._call(self._redis.ping())
        await self._checks.at_readiness()

    async def close(self) -> None:
        self._closed = True
        self._subscription.close()
        self._ack_collector.close()
        await self._redis.aclose()
        if self._close_also is not None:
            await self._close_also()

    async def _follow_primary(self) -> None:
        """Through Sentinel, ask who the primary is; after a failover, drop every connection, the revocation
        subscription's too. A demoted primary keeps serving the connections made before until Sentinel
        reconfigures it (up to ~10 s), and then discards what they wrote: a revocation written there would come
        undone, and a revocation published on the new primary would not reach a subscriber still listening there.
        """
        pool = self._redis.connection_pool
        if not isinstance(pool, SentinelConnectionPool):
            return
        known = pool.master_address
        ask: Callable[[], Awaitable[tuple[str, int]]] = pool.get_master_address  # redis-py leaves it unannotated
        address = await self._call(ask())
        if known is not None and address != known:
            log.warning("Sentinel names a new Redis primary; reconnecting every session-store connection")
            await pool.disconnect(inuse_connections=True)

    async def _replicated(self, calls: Sequence[tuple[AsyncScript, list[str], list[Any]]]) -> list[Any]:
        """Run the scripts in one round trip; with ``wait_for_replicas``, on one connection followed by Redis's
        ``WAIT``, and fail unless that many replicas hold every write of them.

        Redis replicates asynchronously: a revocation the primary acknowledged just before it died may be missing
        on the replica Sentinel promotes, and the revoked sessions would be valid again. WAIT makes the write
        count as done only once replicas hold it (it counts the writes of its own connection, hence the pipeline).
        A write not confirmed in time stays on the primary, but the action is refused (503, fail closed) and a
        deprovisioning retries its kill until it is confirmed (``gateway/deprovision/kill.py``).
        """
        if not self._wait_replicas and len(calls) == 1:
            script, keys, args = calls[0]
            return [await self._call(script(keys=keys, args=args))]
        async with self._redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            if self._wait_replicas:
                pipe.wait(self._wait_replicas, max(1, round(self._wait_timeout * 1000)))
            replies: list[Any] = await self._call(pipe.execute())
        if self._wait_replicas:
            confirmed = int(replies.pop())
            if confirmed < self._wait_replicas:
                raise SessionStoreUnavailable(
                    f"Redis did not confirm the change on {self._wait_replicas} replica(s) within "
                    f"{self._wait_timeout:g} s ([sessions.redis] wait_for_replicas); it is refused, not reported "
                    "done. Check the replicas' links to the primary (INFO replication).",
                    detail=f"{confirmed} of {self._wait_replicas} replicas confirmed",
                )
        return replies

    async def replicas_clock_shift(self) -> float | None:
        return await self._checks.replicas_shift()

    def unreachable_within(self, seconds: float) -> bool:
        return self._unreachable_at is not None and time.monotonic() - self._unreachable_at < seconds

    def _lost(self) -> None:
        self._unreachable_at = time.monotonic()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            self._lost()
            _unavailable(exc)


def _unavailable(exc: BaseException) -> NoReturn:
    """Fail closed without the cause's text: it may name the host, and a URL may carry the password."""
    raise SessionStoreUnavailable(UNAVAILABLE, detail=type(exc).__name__) from None
