"""Two Redis session stores on one server, as two gateway replicas: each sees the other's sessions and group
changes at its next lookup, a session lives in Redis no longer than its timeouts allow (its agent's and its IdP
session's indexes at least as long, whatever the replicas' clocks), and every replica receives the revocation
broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
from redis.asyncio import Redis

from gateway.sessions.base import Session, SessionState, session_key
from gateway.sessions.redis_codec import encode_data
from gateway.sessions.redis_scripts import idp_session_index
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


@contextlib.asynccontextmanager
async def _looked_up_past_its_login_ttl(redis_url: str) -> AsyncIterator[tuple[RedisSessionStore, Session]]:
    """A session created by a replica whose clock runs 10 s ahead, then kept alive by another replica's lookups
    past the TTL its indexes got at the login (absolute + grace); that other replica and the session."""
    skew, timeout, grace = 10.0, 2.0, 0.5
    fast = RedisSessionStore(redis_url, timeout, timeout, "fast", expiry_grace_seconds=grace)
    right = RedisSessionStore(redis_url, timeout, timeout, "right", expiry_grace_seconds=grace)
    try:
        session = await fast.create(ALICE, time.time() + skew)
        started = time.monotonic()
        while time.monotonic() - started < timeout + grace + 1:
            assert (await right.lookup(session.id, time.time())).state is SessionState.VALID
            await asyncio.sleep(0.25)
        yield right, session
    finally:
        await fast.close()
        await right.close()


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
                await store.heartbeat()  # keep the test honest: only lookups refresh the session
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

    @pytest.mark.parametrize(
        "message",
        [
            "1",
            "null",
            '"agent-alice"',
            "[1, 2]",
            "{not json",
            "{}",
            '{"agent_id": 7, "revocation_id": "r", "origin": "o"}',
            '{"agent_id": "a", "revocation_id": "r"}',
            '{"agent_id": "a", "revocation_id": "r", "origin": "o", "session": ["k"]}',
        ],
        ids=["number", "null", "string", "array", "not-json", "empty", "agent-not-a-string", "no-origin",
             "session-not-a-string"],
    )  # fmt: skip
    async def test_a_malformed_broadcast_is_skipped_and_the_next_revocation_still_arrives(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], redis_url: str, message: str
    ) -> None:
        a, b = replicas
        async with aclosing(a.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await wait_for_subscribers(redis_url, 1)
            async with Redis.from_url(redis_url) as raw:  # another release, a stray tool
                await raw.publish("cg:revocations", message)
            _, revocation = await b.revoke_agent(ALICE.agent_id)
            assert await asyncio.wait_for(pending, timeout=5) == revocation

    async def test_a_broadcast_that_is_not_utf8_is_handled_as_a_lost_subscription(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], redis_url: str
    ) -> None:
        """redis-py drops the connection on it and resubscribes unseen: what was published meanwhile is lost, so
        the feed reconnects itself and yields the resync marker (every open connection is checked again)."""
        a, b = replicas
        async with aclosing(a.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await wait_for_subscribers(redis_url, 1)
            async with Redis.from_url(redis_url) as raw:
                await raw.publish("cg:revocations", b"\xff\xfe")
            assert (await asyncio.wait_for(pending, timeout=5)).is_resync
            pending = asyncio.create_task(next_of(feed))
            await wait_for_subscribers(redis_url, 1)
            _, revocation = await b.revoke_agent(ALICE.agent_id)
            assert await asyncio.wait_for(pending, timeout=5) == revocation

    async def test_revoke_agent_finds_a_session_created_by_a_replica_whose_clock_runs_ahead(
        self, redis_url: str
    ) -> None:
        """Replicas pass their own clocks to the scripts: a session created 10 s "in the future" is kept alive by
        lookups elsewhere past the TTL its agent's index got at the login (absolute + grace), so each lookup gives
        the index the session's TTL too, or revoke_agent would no longer find a session every replica serves."""
        async with _looked_up_past_its_login_ttl(redis_url) as (right, session):
            assert (await right.revoke_agent(ALICE.agent_id))[0] == 1
            assert (await right.lookup(session.id, time.time())).state is SessionState.MISSING

    async def test_a_lookup_puts_a_live_session_back_into_an_agent_index_that_expired(self, redis_url: str) -> None:
        store = redis_store(redis_url, "replica-a")
        try:
            session = await store.create(ALICE, T0)
            async with Redis.from_url(redis_url) as raw:
                await raw.delete(f"cg:a:{ALICE.agent_id}")  # as an index that expired before its session would be
                assert (await store.lookup(session.id, T0 + 1)).state is SessionState.VALID
                index_ttl = await raw.pttl(f"cg:a:{ALICE.agent_id}")  # read first: both end at the same moment
                assert 0 < await raw.pttl(f"cg:s:{session_key(session.id)}") <= index_ttl
            assert (await store.revoke_agent(ALICE.agent_id))[0] == 1
        finally:
            await store.close()

    async def test_an_idp_sessions_index_lives_as_long_as_its_sessions_and_then_expires(self, redis_url: str) -> None:
        """It is given the agent index's TTL (absolute + grace) at the login, so Redis collects it with its
        sessions: nothing is left of an IdP session whose sessions all ended by timeout, looked up or not."""
        timeout, grace = 1.0, 0.5
        store = RedisSessionStore(redis_url, timeout, timeout, "replica-a", expiry_grace_seconds=grace)
        index = idp_session_index(ALICE.issuer, "sid-1")
        try:
            session = await store.create(ALICE, time.time())
            async with Redis.from_url(redis_url) as raw:
                index_ttl = await raw.pttl(index)
                assert 0 < await raw.pttl(f"cg:s:{session_key(session.id)}") <= index_ttl
                assert index_ttl <= (timeout + grace + 1) * 1000
                await asyncio.sleep((timeout + grace + 1) + 0.3)
                assert not await raw.exists(index, f"cg:s:{session_key(session.id)}")
        finally:
            await store.close()

    async def test_a_logout_by_sid_finds_a_session_created_by_a_replica_whose_clock_runs_ahead(
        self, redis_url: str
    ) -> None:
        """As for the agent index: lookups elsewhere keep the session alive past the TTL its IdP session's index
        got at the login, so each lookup gives that index the session's TTL too."""
        async with _looked_up_past_its_login_ttl(redis_url) as (right, session):
            found = await right.sessions_of_idp_session(ALICE.issuer, "sid-1", time.time())
            assert [s.id for s in found] == [session_key(session.id)]

    async def test_a_lookup_puts_a_live_session_back_into_an_idp_sessions_index_that_expired(
        self, redis_url: str
    ) -> None:
        store = redis_store(redis_url, "replica-a")
        index = idp_session_index(ALICE.issuer, "sid-1")
        try:
            session = await store.create(ALICE, T0)
            async with Redis.from_url(redis_url) as raw:
                await raw.delete(index)  # as an index that expired before its session would be
                assert (await store.lookup(session.id, T0 + 1)).state is SessionState.VALID
                index_ttl = await raw.pttl(index)  # read first: both end at the same moment
                assert 0 < await raw.pttl(f"cg:s:{session_key(session.id)}") <= index_ttl
            found = await store.sessions_of_idp_session(ALICE.issuer, "sid-1", T0 + 1)
            assert [s.id for s in found] == [session_key(session.id)]
        finally:
            await store.close()
