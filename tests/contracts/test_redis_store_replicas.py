"""Two Redis session stores on one server, as two gateway replicas: each sees the other's sessions and group
changes at its next lookup, a session lives in Redis no longer than its timeouts allow, and every replica receives
the revocation broadcast.
"""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import aclosing

import pytest
from redis.asyncio import Redis

from gateway.sessions.base import SessionState, session_key
from gateway.sessions.redis_codec import encode_data
from gateway.sessions.redis_store import RedisSessionStore
from tests.components.session_stores import (
    ABSOLUTE,
    ALICE,
    IDLE,
    ODD_GROUP_IDS,
    ODD_GROUPS,
    T0,
    next_of,
    redis_store,
    wait_for_subscribers,
)


@pytest.mark.redis
class TestRedisReplicas:
    async def test_two_replicas_see_each_others_sessions(self, replicas: tuple[RedisSessionStore, ...]) -> None:
        a, b = replicas
        session = await a.create(ALICE, T0)
        assert (await b.lookup(session.id, T0 + 1)).state is SessionState.VALID
        assert await b.delete(session.id) == ALICE
        assert (await a.lookup(session.id, T0 + 2)).state is SessionState.MISSING

    async def test_a_session_lives_in_redis_no_longer_than_its_idle_timeout_plus_grace(self, redis_url: str) -> None:
        store = redis_store(redis_url, "replica-a", expiry_grace_seconds=5)
        try:
            session = await store.create(ALICE, T0)
            async with Redis.from_url(redis_url) as raw:
                ttl = await raw.pttl(f"cg:s:{session_key(session.id)}")
                assert 0 < ttl <= (IDLE + 5) * 1000
                # Near the absolute limit the remaining lifetime, not the idle timeout, bounds the TTL.
                for now in (T0 + ABSOLUTE - IDLE / 2 - 10, T0 + ABSOLUTE - 10):
                    await store.heartbeat(now)  # keep the test honest: only lookups refresh the session
                now = T0
                while now < T0 + ABSOLUTE - 10:
                    now = min(now + IDLE / 2, T0 + ABSOLUTE - 10)
                    assert (await store.lookup(session.id, now)).state is SessionState.VALID
                assert 0 < await raw.pttl(f"cg:s:{session_key(session.id)}") <= 15_000
        finally:
            await store.close()

    async def test_a_group_update_on_one_replica_applies_to_the_next_lookup_on_the_other(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore]
    ) -> None:
        a, b = replicas
        sessions = [await a.create(ALICE, T0) for _ in range(2)]
        assert (await b.lookup(sessions[0].id, T0 + 1)).state is SessionState.VALID
        assert await b.update_agent_groups(ALICE.agent_id, frozenset({"voice"})) == 2
        for store, session in ((a, sessions[0]), (a, sessions[1]), (b, sessions[1])):
            found = await store.lookup(session.id, T0 + 2)
            assert found.session is not None and found.session.data.groups == {"voice"}

    @pytest.mark.parametrize("groups", ODD_GROUPS, ids=ODD_GROUP_IDS)
    async def test_a_group_update_rewrites_only_the_groups_and_keeps_the_ttl(
        self, redis_url: str, groups: frozenset[str]
    ) -> None:
        store = redis_store(redis_url, "replica-a")
        try:
            odd = dataclasses.replace(
                ALICE, user_name='al"ice],"groups":[', groups=ODD_GROUPS[3], auth_time=1_749_999_990.123456789
            )
            session = await store.create(odd, T0)
            key = f"cg:s:{session_key(session.id)}"
            async with Redis.from_url(redis_url, decode_responses=True) as raw:
                before = await raw.hgetall(key)
                ttl = await raw.pttl(key)
                assert await store.update_agent_groups(ALICE.agent_id, groups) == 1
                after = await raw.hgetall(key)
                assert after == before | {"data": encode_data(dataclasses.replace(odd, groups=groups))}
                assert ttl - 5_000 < await raw.pttl(key) <= ttl
        finally:
            await store.close()

    async def test_each_replica_receives_the_revocation_broadcast(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], redis_url: str
    ) -> None:
        a, b = replicas
        async with aclosing(a.revocations()) as feed_a, aclosing(b.revocations()) as feed_b:
            pending = [asyncio.create_task(next_of(feed_a)), asyncio.create_task(next_of(feed_b))]
            await wait_for_subscribers(redis_url, 2)
            _, revocation = await b.revoke_agent(ALICE.agent_id)
            received = await asyncio.wait_for(asyncio.gather(*pending), timeout=5)
        assert received == [revocation, revocation]
        assert revocation.origin_replica == "replica-b"
