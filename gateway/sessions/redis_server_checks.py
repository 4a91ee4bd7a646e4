"""What the session store checks of its Redis server, and of this replica against it, at start, at every heartbeat
and at every readiness probe.

Each check has a module of its own that says why and decides; this one reads what they need from Redis and says
what follows: the primary's replicas against ``wait_for_replicas`` (gateway/sessions/redis_replication.py: logged),
the eviction policy (gateway/sessions/redis_eviction.py: refused at start, not ready while running) and this host's
clock against the other replicas' and Redis's (gateway/sessions/redis_clock.py: refused at start, sessions refused
and not ready while running). A check Redis does not answer is left to the store's own commands, which report an
unreachable Redis (503).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from gateway.errors import ClockSkewed, ConfigError
from gateway.sessions.redis_clock import ClockReading, ClockSkew, shift_onto_replicas
from gateway.sessions.redis_eviction import EvictionWatch
from gateway.sessions.redis_replication import ReplicationWatch
from gateway.sessions.redis_scripts import CLOCK_PREFIX, CLOCKS_SCRIPT, REPLICAS_KEY

log = logging.getLogger("channelgate.sessions")


class ServerChecks:
    """The session store's Redis server and this replica's clock, checked (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        replica_id: str,
        *,
        liveness_seconds: float,
        wait_for_replicas: int,
        on_eviction_unsafe: Callable[[], None] | None,
        max_clock_skew: float,
        wall_clock: Callable[[], float],
    ) -> None:
        self._redis = redis
        self._replica_id = replica_id
        self._liveness_seconds = liveness_seconds
        #: Compares the primary's replicas with ``wait_for_replicas`` at each heartbeat.
        self._replication = ReplicationWatch(wait_for_replicas)
        #: Compares Redis's eviction setting with ``noeviction`` at start, at each heartbeat and readiness probe.
        self._eviction = EvictionWatch(on_eviction_unsafe)
        #: This host's clock put to a vote of Redis's and the other live replicas', at the same moments.
        self._clock = ClockSkew(max_clock_skew)
        self._wall_clock = wall_clock
        self._clocks = redis.register_script(CLOCKS_SCRIPT)

    async def at_start(self) -> None:
        """Refuse a Redis that may evict keys (an evicted index would let sessions outlive a deprovisioning) and a
        clock outvoted by the other replicas' and Redis's (session timeouts would not hold): ``ConfigError``."""
        if not await self._watch_eviction():
            self._eviction.unreachable_at_start()
        elif self._eviction.problem is not None:
            raise ConfigError(self._eviction.problem)
        elif await self._watch_clock() and self._clock.broken:
            raise ConfigError(self._clock.problem())

    async def at_heartbeat(self) -> None:
        await self._watch_replication()
        await self._watch_eviction()
        await self._watch_clock()

    async def at_readiness(self) -> None:
        """Not ready while Redis may evict keys (``ConfigError``) or this replica's clock is outvoted
        (``ClockSkewed``); the replica keeps serving what it safely can, and logged the error once."""
        await self._watch_eviction()
        if self._eviction.problem is not None:
            raise ConfigError(self._eviction.problem)
        await self._watch_clock()
        self.refuse_if_clock_skewed()

    @property
    def clock_skewed(self) -> bool:
        """Whether this replica's clock was last outvoted (sessions are refused while it is)."""
        return self._clock.broken

    def refuse_if_clock_skewed(self) -> None:
        if self._clock.broken:
            raise ClockSkewed(self._clock.problem())

    async def _watch_clock(self) -> bool:
        """Read Redis's ``TIME``, publish this replica's offset and read the other live replicas' (``CLOCKS_SCRIPT``);
        False when Redis did not answer."""
        try:
            reading, peers = await self._read_clocks(self._replica_id)
        except (RedisError, OSError):
            return False
        self._clock.observe(reading, peers)
        return True

    async def replicas_shift(self) -> float | None:
        """For a process that is not a replica (the CLI): seconds to add to its clock to read no earlier than any
        serving replica's (``shift_onto_replicas``); publishes nothing. None (logged) when Redis does not answer: the
        kill that follows fails then too, and the next one reads again."""
        try:
            reading, offsets = await self._read_clocks("")
        except (RedisError, OSError) as exc:
            log.warning(
                "could not read the replicas' clocks from Redis (%s): session ends are stamped with this host's clock",
                type(exc).__name__,
            )
            return None
        if not offsets:
            log.warning("no replica is live: session ends are stamped with the later of this host's and Redis's clocks")
        return shift_onto_replicas(reading, offsets, self._clock.max_skew_seconds)

    async def _read_clocks(self, replica_id: str) -> tuple[ClockReading, list[float]]:
        """This host's clock against Redis's ``TIME``, and the offsets the other live replicas published; publishes
        this one's as ``replica_id`` (an empty id publishes nothing). Raises what Redis or the connection raised."""
        sent_at = self._wall_clock()
        seconds, microseconds = await self._redis.time()
        reading = ClockReading(sent_at, seconds + microseconds / 1e6, self._wall_clock())
        keep_ms = int(self._liveness_seconds * 2000)
        args: list[str | int | float] = [
            replica_id, repr(reading.offset), keep_ms, self._liveness_seconds, CLOCK_PREFIX
        ]  # fmt: skip
        peers = await self._clocks(keys=[REPLICAS_KEY], args=args)
        return reading, [float(offset) for offset in peers]

    async def _watch_replication(self) -> None:
        """Tell the operator when the primary's replicas do not match ``wait_for_replicas``."""
        if not self._replication.active:
            return
        try:
            info = await self._redis.info("replication")
        except ResponseError as refused:  # an ACL user without INFO: only this check is off
            self._replication.refused(str(refused))
            return
        except (RedisError, OSError):
            return
        self._replication.observe(info)

    async def _watch_eviction(self) -> bool:
        """Compare Redis's eviction setting with ``noeviction``; False when Redis did not answer."""
        if not self._eviction.active:
            return True
        try:
            info = await self._redis.info("memory")
        except ResponseError as refused:  # an ACL user without INFO: only this check is off
            self._eviction.refused(str(refused))
            return True
        except (RedisError, OSError):
            return False
        self._eviction.observe(info)
        return True
