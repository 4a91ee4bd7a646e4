"""Acknowledgements of revocation broadcasts on the Redis session store, against a real Redis server: the
revoking replica learns which live replicas closed the agent's connections (gateway/sessions/redis_acks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import cast

import pytest
from redis.asyncio import Redis

from gateway.app import _revocation_listener
from gateway.errors import SessionStoreUnavailable
from gateway.services import Services
from gateway.sessions.redis_store import RedisSessionStore
from tests.components.redis_server import RedisServer
from tests.components.session_stores import redis_store, wait_for_subscribers

pytestmark = pytest.mark.redis


ALICE, BOB = "agent-alice", "agent-bob"


async def _both_live(
    replicas: tuple[RedisSessionStore, RedisSessionStore],
) -> tuple[RedisSessionStore, RedisSessionStore]:
    """Both replicas with a fresh heartbeat: each is expected to acknowledge every revocation."""
    for replica in replicas:
        await replica.heartbeat()
    return replicas


async def _heartbeat_seconds_ago(url: str, replica_id: str, seconds: float) -> None:
    """A heartbeat ``seconds`` old by Redis's clock, the one heartbeats are scored and read with."""
    async with Redis.from_url(url, decode_responses=True) as raw:
        now_s, now_us = await raw.time()
        await raw.zadd("cg:replicas", {replica_id: now_s + now_us / 1e6 - seconds})


class TestTwoReplicas:
    async def test_acks_from_both_replicas_are_collected_and_a_dead_replica_is_not_awaited(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], redis_url: str
    ) -> None:
        a, b = replicas
        await _heartbeat_seconds_ago(redis_url, "replica-dead", 60)
        await a.heartbeat()
        await b.heartbeat()
        _, revocation = await a.revoke_agent(ALICE)

        async def ack_later() -> None:
            await asyncio.sleep(0.2)
            await b.acknowledge(revocation)
            await a.acknowledge(revocation)

        started = time.monotonic()
        acks = asyncio.create_task(ack_later())
        acked, missing = await a.wait_for_acks(revocation, timeout=5)
        await acks
        assert (acked, missing) == ({"replica-a", "replica-b"}, set())
        assert time.monotonic() - started < 2

    async def test_a_live_replica_that_never_acknowledges_is_reported_missing_after_the_timeout(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore]
    ) -> None:
        a, _ = await _both_live(replicas)
        _, revocation = await a.revoke_agent(ALICE)
        await a.acknowledge(revocation)
        started = time.monotonic()
        acked, missing = await a.wait_for_acks(revocation, timeout=0.8)
        assert (acked, missing) == ({"replica-a"}, {"replica-b"})
        assert 0.7 < time.monotonic() - started < 1.5

    async def test_a_storm_of_waits_shares_one_blocking_redis_connection_and_each_gets_its_own_acks(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], redis_url: str
    ) -> None:
        a, b = await _both_live(replicas)
        revocations = [(await a.revoke_agent(f"agent-{n}"))[1] for n in range(50)]
        async with Redis.from_url(redis_url, decode_responses=True) as raw:
            connected = int((await raw.info("clients"))["connected_clients"])
            waits = [asyncio.create_task(a.wait_for_acks(revocation, timeout=5)) for revocation in revocations]
            await asyncio.sleep(0.2)
            blocked = int((await raw.info("clients"))["blocked_clients"])
            # The waits share one read of the live replicas and one blocking reader: a few connections, not fifty.
            assert int((await raw.info("clients"))["connected_clients"]) - connected <= 3
            for revocation in revocations:
                await a.acknowledge(revocation)
            for revocation in revocations[::2]:  # replica-b answers only every other broadcast
                await b.acknowledge(revocation)
            results = await asyncio.gather(*(asyncio.wait_for(w, timeout=10) for w in waits[::2]))
            assert blocked == 1
        assert results == [({"replica-a", "replica-b"}, set())] * 25
        late = await asyncio.gather(*waits[1::2])  # still waiting for replica-b: its timeout
        assert late == [({"replica-a"}, {"replica-b"})] * 25

    async def test_a_second_wait_on_a_revocation_sees_the_acks_the_first_collected(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore]
    ) -> None:
        a, b = await _both_live(replicas)
        _, revocation = await a.revoke_agent(ALICE)
        await a.acknowledge(revocation)
        await b.acknowledge(revocation)
        assert await a.wait_for_acks(revocation, timeout=5) == ({"replica-a", "replica-b"}, set())
        started = time.monotonic()
        assert await a.wait_for_acks(revocation, timeout=5) == ({"replica-a", "replica-b"}, set())
        assert time.monotonic() - started < 1

    async def test_an_ack_from_a_replica_of_the_earlier_release_is_counted(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], redis_url: str
    ) -> None:
        # A replica from before the per-replica acknowledgement lists pushes its id on the revocation's own list
        # (a rolling upgrade): it is found when the wait ends, not reported missing.
        a, _ = await _both_live(replicas)
        _, revocation = await a.revoke_agent(ALICE)
        await a.acknowledge(revocation)
        async with Redis.from_url(redis_url, decode_responses=True) as raw:
            await raw.rpush(f"cg:ack:{revocation.revocation_id}", "replica-b")
        assert await a.wait_for_acks(revocation, timeout=0.5) == ({"replica-a", "replica-b"}, set())

    async def test_an_ack_names_the_revocation_so_one_for_another_broadcast_does_not_count(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore]
    ) -> None:
        a, b = await _both_live(replicas)
        _, first = await a.revoke_agent(ALICE)
        _, second = await a.revoke_agent(BOB)
        await a.acknowledge(first)
        await b.acknowledge(first)
        await a.acknowledge(second)
        assert await a.wait_for_acks(second, timeout=0.5) == ({"replica-a"}, {"replica-b"})

    async def test_a_live_replica_whose_clock_runs_behind_is_still_waited_for(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Heartbeats are scored and read with Redis's clock: 20 s behind the revoking replica (more than
        ``liveness_seconds``), a silent replica is still reported missing, not left out."""
        a, b = replicas
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 20)  # replica-b's clock
        await b.heartbeat()
        monkeypatch.setattr(time, "time", real)
        await a.heartbeat()
        _, revocation = await a.revoke_agent(ALICE)
        await a.acknowledge(revocation)
        assert await a.wait_for_acks(revocation, timeout=0.5) == ({"replica-a"}, {"replica-b"})

    async def test_a_dead_replica_whose_clock_ran_ahead_is_not_waited_for_past_its_liveness(
        self, redis_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        a = redis_store(redis_url, "replica-a", liveness_seconds=1.0)
        ahead = redis_store(redis_url, "replica-ahead", liveness_seconds=1.0)
        try:
            real = time.time
            monkeypatch.setattr(time, "time", lambda: real() + 20)  # replica-ahead's clock
            await ahead.heartbeat()
            monkeypatch.setattr(time, "time", real)
            await a.heartbeat()
            await asyncio.sleep(1.2)  # replica-ahead died after its last heartbeat
            await a.heartbeat()
            _, revocation = await a.revoke_agent(ALICE)
            await a.acknowledge(revocation)
            assert await a.wait_for_acks(revocation, timeout=0.5) == ({"replica-a"}, set())
        finally:
            await a.close()
            await ahead.close()

    async def test_a_malformed_broadcast_does_not_stop_a_replica_acknowledging_the_next_revocation(
        self, replicas: tuple[RedisSessionStore, RedisSessionStore], redis_url: str
    ) -> None:
        """A JSON value that is not an object once ended every replica's listener for good, while its heartbeat
        kept it counted live: every later deprovisioning waited for it in vain."""
        a, b = await _both_live(replicas)
        live = _Live()
        services = cast(Services, SimpleNamespace(sessions=a, live=live, connectors={}, collector=None))
        listener = asyncio.create_task(_revocation_listener(services))
        try:
            await wait_for_subscribers(redis_url, 1)
            async with Redis.from_url(redis_url, decode_responses=True) as raw:
                await raw.publish("cg:revocations", "1")
            await asyncio.sleep(0.2)
            assert not listener.done()
            _, revocation = await b.revoke_agent(ALICE)
            await b.acknowledge(revocation)
            assert await b.wait_for_acks(revocation, timeout=5) == ({"replica-a", "replica-b"}, set())
            assert live.closed == [ALICE]
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


class _Live:
    """This replica's open connections: none, and a record of which agents' were closed."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def close_agent(self, agent_id: str) -> int:
        self.closed.append(agent_id)
        return 0

    async def close_session(self, key: str) -> int:
        return 0


class TestRedisOutage:
    """Each test owns its Redis server (``own_redis``), so killing it disturbs no other test."""

    async def test_waits_for_acks_fail_closed_when_redis_dies_while_they_wait(
        self, own_redis: RedisServer, own_redis_store: RedisSessionStore
    ) -> None:
        await own_redis_store.heartbeat()
        revocations = [(await own_redis_store.revoke_agent(f"agent-{n}"))[1] for n in range(5)]
        await _heartbeat_seconds_ago(own_redis.url, "replica-b", 0)  # a live replica that never answers
        waits = [
            asyncio.create_task(own_redis_store.wait_for_acks(revocation, timeout=30)) for revocation in revocations
        ]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        own_redis.kill()
        for wait in waits:
            with pytest.raises(SessionStoreUnavailable):
                await wait
        assert time.monotonic() - started < 2
        own_redis.restart()
        await own_redis_store.heartbeat()
        _, revocation = await own_redis_store.revoke_agent(ALICE)
        await own_redis_store.acknowledge(revocation)
        assert await own_redis_store.wait_for_acks(revocation, timeout=5) == ({"replica-a"}, set())
