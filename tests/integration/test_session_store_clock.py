"""A replica whose clock disagrees with Redis's decides session timeouts wrongly: refused at start, and sessions
refused while running until it agrees again, against a real ``redis-server`` (gateway/sessions/redis_clock.py).

The replica's clock is the store's ``wall_clock``, shifted here as a host without NTP would have it; Redis's is its
own ``TIME``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.errors import ClockSkewed, ConfigError
from gateway.sessions.base import SessionData, SessionState
from gateway.sessions.redis_store import RedisSessionStore
from tests.components.redis_server import RedisServer

pytestmark = pytest.mark.redis

ALICE = SessionData(agent_id="a-1", user_name="alice", issuer="https://idp.example", subject="s-1")


class ShiftedClock:
    """This host's clock, ``offset`` seconds off the real one."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
async def store(redis: RedisServer, clock: ShiftedClock) -> AsyncIterator[RedisSessionStore]:
    store = RedisSessionStore(redis.url, 1800, 28800, "replica-a", max_clock_skew=5.0, wall_clock=clock)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize(("offset", "words"), [(60.0, "60.0 s ahead of Redis's"), (-60.0, "60.0 s behind Redis's")])
async def test_a_host_clock_off_redis_by_more_than_allowed_is_refused_at_start_and_says_how_to_fix_it(
    store: RedisSessionStore, clock: ShiftedClock, offset: float, words: str
) -> None:
    clock.offset = offset
    with pytest.raises(ConfigError) as refused:
        await store.verify_server()
    assert words in refused.value.message
    assert "max_clock_skew_seconds" in refused.value.message and "NTP" in refused.value.message


async def test_a_host_clock_within_the_allowance_starts_and_serves_sessions(
    store: RedisSessionStore, clock: ShiftedClock
) -> None:
    clock.offset = 2.0
    await store.verify_server()
    await store.heartbeat()
    await store.ping()
    session = await store.create(ALICE, time.time())
    assert (await store.lookup(session.id, time.time())).state is SessionState.VALID


async def test_a_clock_that_drifts_while_running_refuses_sessions_and_readiness_until_it_agrees_again(
    store: RedisSessionStore, clock: ShiftedClock
) -> None:
    await store.verify_server()
    session = await store.create(ALICE, time.time())

    clock.offset = -30.0  # the host's clock jumps back (a VM resumed without NTP)
    await store.heartbeat()

    with pytest.raises(ClockSkewed) as refused:
        await store.lookup(session.id, time.time())
    assert refused.value.status == 503 and refused.value.code == "clock_skew"
    assert "30.0 s behind Redis's" in refused.value.message
    assert refused.value.public_message is not None and "Redis" not in refused.value.public_message
    with pytest.raises(ClockSkewed):
        await store.create(ALICE, time.time())
    with pytest.raises(ClockSkewed):
        await store.ping()  # not ready
    ended, _ = await store.revoke_agent(ALICE.agent_id)  # what ends access never waits for the clock
    assert ended == 1

    clock.offset = 0.0
    await store.heartbeat()
    await store.ping()
    again = await store.create(ALICE, time.time())
    assert (await store.lookup(again.id, time.time())).state is SessionState.VALID
