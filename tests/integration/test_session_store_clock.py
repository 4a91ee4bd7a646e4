"""A replica whose clock disagrees with the other replicas' and Redis's decides session timeouts wrongly: refused
at start, and sessions refused while running until it agrees again, against a real ``redis-server``
(gateway/sessions/redis_clock.py). A Redis whose own clock drifts takes no replica down.

Each replica's clock is its store's ``wall_clock``, shifted here as a host without NTP would have it; Redis's is its
own ``TIME``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import pytest

from gateway.errors import ClockSkewed, ConfigError
from gateway.sessions.base import SessionData, SessionState, session_key
from gateway.sessions.local_cache import CachedSessionStore
from gateway.sessions.redis_store import RedisSessionStore
from gateway.sessions.watch import sweep
from tests.components.recording_live import RecordingLive
from tests.components.redis_server import RedisServer
from tests.integration.test_revived_sessions import _command

pytestmark = pytest.mark.redis

ALICE = SessionData(agent_id="a-1", user_name="alice", issuer="https://idp.example", subject="s-1")


class ShiftedClock:
    """A host's clock, ``offset`` seconds off the real one."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


class Fleet:
    """Replicas of one Redis, each with its own clock; ``replica(name)`` starts one (heartbeat included)."""

    def __init__(self, redis: RedisServer, stack: AsyncExitStack) -> None:
        self._redis, self._stack = redis, stack
        self.clocks: dict[str, ShiftedClock] = {}

    async def replica(self, name: str, offset: float = 0.0, *, verify: bool = True) -> RedisSessionStore:
        clock = self.clocks[name] = ShiftedClock(offset)
        store = RedisSessionStore(self._redis.url, 1800, 28800, name, max_clock_skew=5.0, wall_clock=clock)
        self._stack.push_async_callback(store.close)
        if verify:
            await store.verify_server()
        await store.heartbeat()
        return store


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def fleet(redis: RedisServer) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        yield Fleet(redis, stack)


@pytest.mark.parametrize(("offset", "words"), [(60.0, "60.0 s ahead of Redis's"), (-60.0, "60.0 s behind Redis's")])
async def test_a_replica_whose_clock_disagrees_with_the_others_and_redis_is_refused_at_start(
    fleet: Fleet, offset: float, words: str
) -> None:
    await fleet.replica("replica-a")
    with pytest.raises(ConfigError) as refused:
        await fleet.replica("replica-b", offset)
    assert words in refused.value.message and "disagrees with 1 of the 2 live replicas' clocks" in refused.value.message
    assert "max_clock_skew_seconds" in refused.value.message and "NTP" in refused.value.message


async def test_a_clock_within_the_allowance_starts_and_serves_sessions(fleet: Fleet) -> None:
    await fleet.replica("replica-a")
    store = await fleet.replica("replica-b", 2.0)
    await store.ping()
    session = await store.create(ALICE, time.time())
    assert (await store.lookup(session.id, time.time())).state is SessionState.VALID


async def test_a_redis_whose_clock_drifted_takes_no_replica_down(fleet: Fleet) -> None:
    # Both replicas agree with each other and are 30 s off Redis: it is Redis's clock that is wrong.
    first = await fleet.replica("replica-a", 30.0)
    second = await fleet.replica("replica-b", 30.0)
    await first.heartbeat()
    for store in (first, second):
        await store.ping()
        session = await store.create(ALICE, time.time())
        assert (await store.lookup(session.id, time.time())).state is SessionState.VALID


async def test_a_replica_alone_is_not_refused_for_its_offset_from_redis(fleet: Fleet) -> None:
    # Every timeout is then decided with its one clock, consistently.
    store = await fleet.replica("replica-a", 60.0)
    await store.ping()


async def test_a_clock_that_drifts_while_running_refuses_sessions_and_readiness_until_it_agrees_again(
    fleet: Fleet,
) -> None:
    await fleet.replica("replica-a")
    store = await fleet.replica("replica-b")
    cached = CachedSessionStore(store, 60.0)
    store.subscribed = True  # as the revocation listener sets it: the cache answers from memory only then
    session = await cached.create(ALICE, time.time())
    assert (await cached.lookup(session.id, time.time())).state is SessionState.VALID  # now in the cache

    fleet.clocks["replica-b"].offset = -30.0  # the host's clock jumps back (a VM resumed without NTP)
    await store.heartbeat()

    assert cached.clock_skewed
    with pytest.raises(ClockSkewed) as refused:
        await cached.lookup(session.id, time.time())  # not from the cache either
    assert refused.value.status == 503 and refused.value.code == "clock_skew"
    assert "30.0 s behind Redis's" in refused.value.message
    assert refused.value.public_message is not None and "Redis" not in refused.value.public_message
    with pytest.raises(ClockSkewed):
        await store.create(ALICE, time.time())
    with pytest.raises(ClockSkewed):
        await store.ping()  # not ready
    ended, _ = await store.revoke_agent(ALICE.agent_id)  # what ends access never waits for the clock
    assert ended == 1

    fleet.clocks["replica-b"].offset = 0.0
    await store.heartbeat()
    await store.ping()
    again = await store.create(ALICE, time.time())
    assert (await store.lookup(again.id, time.time())).state is SessionState.VALID


async def test_the_open_connections_of_a_replica_whose_clock_is_outvoted_are_closed_once_not_warned_about(
    fleet: Fleet,
) -> None:
    await fleet.replica("replica-a")
    store = await fleet.replica("replica-b")
    session = await store.create(ALICE, time.time())
    live = RecordingLive()
    assert live.bind(session) is not None
    assert await sweep(live, store, time.time(), 1800, 28800) == 0  # fresh: kept

    fleet.clocks["replica-b"].offset = 45.0
    await store.heartbeat()

    # It cannot tell whether the session is still valid: fail closed, not a warning per connection per second.
    assert await sweep(live, store, time.time(), 1800, 28800) == 1
    assert live.closed == [(session_key(session.id), "this replica's clock cannot be trusted")]


async def test_with_redis_drifted_and_a_third_replica_off_the_two_that_agree_serve_and_the_third_is_refused(
    fleet: Fleet,
) -> None:
    first = await fleet.replica("replica-a", 30.0)
    second = await fleet.replica("replica-b", 30.0)
    with pytest.raises(ConfigError, match="disagrees with 2 of the 3 live replicas' clocks"):
        await fleet.replica("replica-c", 90.0)
    for store in (first, second):
        await store.heartbeat()
        await store.ping()


async def test_a_process_outside_the_vote_reads_the_replicas_clock_without_taking_part(
    fleet: Fleet, redis: RedisServer
) -> None:
    """The CLI's deprovisioning stamps its saved end on the replicas' clock (gateway/deprovision/endings.py)."""
    await fleet.replica("replica-a", 60.0, verify=False)  # two replicas 60 and 63 s ahead of Redis: they agree
    await fleet.replica("replica-b", 63.0, verify=False)
    await fleet.replica("replica-c", -300.0, verify=False)  # outvoted: its clock must not count
    cli = RedisSessionStore(redis.url, 1800, 28800, "cli", wall_clock=ShiftedClock(-20.0))
    try:
        # 20 s behind Redis: no earlier than the latest serving clock is 83 s on (the median of all three: 80).
        assert await cli.replicas_clock_shift() == pytest.approx(83.0, abs=1.0)
    finally:
        await cli.close()
    published = _command(redis, "EVAL", "return #redis.call('KEYS', 'cg:clock:*')", "0")
    assert published == b":3\r\n"  # the three replicas' offsets: the CLI published none


async def test_with_no_replica_alive_a_process_outside_the_vote_reads_redis_clock(redis: RedisServer) -> None:
    cli = RedisSessionStore(redis.url, 1800, 28800, "cli", wall_clock=ShiftedClock(-20.0))
    try:
        assert await cli.replicas_clock_shift() == pytest.approx(20.0, abs=1.0)
    finally:
        await cli.close()
