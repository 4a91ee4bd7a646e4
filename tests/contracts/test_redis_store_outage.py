"""The Redis session store when Redis dies: every method fails closed within two seconds with a message that names
no address, the same store works again by itself once Redis is back, and the revocation feed resumes with a
resync marker first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing

import pytest

from gateway.errors import SessionStoreUnavailable
from gateway.sessions.base import RESYNC_AGENT_ID, Revocation, SessionState, UseClaim, UseState
from gateway.sessions.redis_store import UNAVAILABLE, RedisSessionStore
from tests.components.redis_server import RedisServer
from tests.components.session_stores import ALICE, BOB, PENDING, T0, next_of, wait_for_subscribers


@pytest.mark.redis
class TestRedisOutage:
    """Each test owns its Redis server (``own_redis``), so killing it disturbs no other test."""

    @staticmethod
    def calls(store: RedisSessionStore, revocation: Revocation) -> dict[str, Callable[[], object]]:
        return {
            "create": lambda: store.create(ALICE, T0),
            "lookup": lambda: store.lookup("some-id", T0),
            "delete": lambda: store.delete("some-id"),
            "revoke_agent": lambda: store.revoke_agent(ALICE.agent_id),
            "sessions_of": lambda: store.sessions_of(ALICE.agent_id, T0),
            "update_agent_groups": lambda: store.update_agent_groups(ALICE.agent_id, frozenset({"voice"})),
            "put_pending_login": lambda: store.put_pending_login("login", PENDING, 60),
            "take_pending_login": lambda: store.take_pending_login("login"),
            "claim_use": lambda: store.claim_use("jti", 60),
            "confirm_use": lambda: store.confirm_use(UseClaim("jti", "holder", UseState.CLAIMED), 60),
            "release_use": lambda: store.release_use(UseClaim("jti", "holder", UseState.CLAIMED)),
            "acknowledge": lambda: store.acknowledge(revocation),
            "wait_for_acks": lambda: store.wait_for_acks(revocation, 5),
            "heartbeat": lambda: store.heartbeat(),
            "ping": lambda: store.ping(),
        }

    async def test_every_method_fails_closed_within_two_seconds_when_redis_is_killed(
        self, own_redis: RedisServer, own_redis_store: RedisSessionStore
    ) -> None:
        session = await own_redis_store.create(ALICE, T0)  # the pool holds live connections when Redis dies
        revocation = Revocation(ALICE.agent_id, "rev-1", "replica-a")
        own_redis.kill()
        for name, call in self.calls(own_redis_store, revocation).items():
            started = time.monotonic()
            with pytest.raises(SessionStoreUnavailable) as caught:
                await call()  # type: ignore[misc]
            assert time.monotonic() - started < 2, name
            assert caught.value.message == UNAVAILABLE
            text = f"{caught.value} {caught.value.detail} {caught.value!r}"
            assert str(own_redis.port) not in text and "redis://" not in text, name
        with pytest.raises(SessionStoreUnavailable):
            await own_redis_store.lookup(session.id, T0)

    async def test_the_same_store_works_again_by_itself_after_redis_restarts(
        self, own_redis: RedisServer, own_redis_store: RedisSessionStore
    ) -> None:
        await own_redis_store.ping()
        own_redis.kill()
        with pytest.raises(SessionStoreUnavailable):
            await own_redis_store.ping()
        own_redis.restart()
        session = await own_redis_store.create(ALICE, T0)
        assert (await own_redis_store.lookup(session.id, T0 + 1)).state is SessionState.VALID
        count, _ = await own_redis_store.revoke_agent(ALICE.agent_id)
        assert count == 1

    async def test_revocations_resume_after_a_redis_restart_with_a_resync_marker_first(
        self, own_redis: RedisServer, own_redis_store: RedisSessionStore
    ) -> None:
        async with aclosing(own_redis_store.revocations()) as feed:
            first = asyncio.create_task(next_of(feed))
            await wait_for_subscribers(own_redis.url, 1)
            own_redis.kill()
            own_redis.restart()
            marker = await asyncio.wait_for(first, timeout=10)
            assert marker.is_resync
            assert marker.agent_id == RESYNC_AGENT_ID
            assert marker.origin_replica == "replica-a"
            following = asyncio.create_task(next_of(feed))
            await wait_for_subscribers(own_redis.url, 1)
            _, revocation = await own_redis_store.revoke_agent(BOB.agent_id)
            assert await asyncio.wait_for(following, timeout=5) == revocation
