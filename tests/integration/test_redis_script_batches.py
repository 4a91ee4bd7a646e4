"""Lookups made in one event-loop turn share one pipelined round trip, and every caller still gets exactly its
own reply or its own error (gateway/sessions/redis_batches.py), against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.sessions.base import SessionData, SessionState
from gateway.sessions.redis_batches import ScriptBatches
from gateway.sessions.redis_store import RedisSessionStore

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

#: Echoes its key and argument; an argument "bad" is an error for that call alone.
ECHO = "if ARGV[1] == 'bad' then return redis.error_reply('bad argument') end return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _count_pipelines(client: Redis) -> list[int]:
    """How many pipelines the client opens (a spy on the real client, which still does the work)."""
    opened: list[int] = []
    original = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return original(*args, **kwargs)

    client.pipeline = pipeline  # type: ignore[method-assign]
    return opened


async def test_calls_of_one_turn_share_one_round_trip_and_each_gets_its_own_reply(redis: Redis) -> None:
    batches = ScriptBatches(redis, redis.register_script(ECHO))
    opened = _count_pipelines(redis)
    replies = await asyncio.gather(*(batches.run([f"k{n}"], [str(n)]) for n in range(20)))
    assert replies == [[f"k{n}".encode(), str(n).encode()] for n in range(20)]
    assert len(opened) == 1
    assert await batches.run(["alone"], ["1"]) == [b"alone", b"1"]  # one call: no pipeline
    assert len(opened) == 1


async def test_an_error_reaches_only_its_own_caller(redis: Redis) -> None:
    batches = ScriptBatches(redis, redis.register_script(ECHO))
    results = await asyncio.gather(
        batches.run(["a"], ["1"]), batches.run(["b"], ["bad"]), batches.run(["c"], ["3"]), return_exceptions=True
    )
    assert results[0] == [b"a", b"1"] and results[2] == [b"c", b"3"]
    assert isinstance(results[1], ResponseError) and "bad argument" in str(results[1])


async def test_a_script_redis_forgot_is_loaded_again(redis: Redis) -> None:
    batches = ScriptBatches(redis, redis.register_script(ECHO))
    await redis.script_flush()
    replies = await asyncio.gather(*(batches.run([f"k{n}"], [str(n)]) for n in range(3)))
    assert replies == [[f"k{n}".encode(), str(n).encode()] for n in range(3)]


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis: Redis) -> None:
    batches = ScriptBatches(redis, redis.register_script(ECHO))
    calls = [asyncio.ensure_future(batches.run([f"k{n}"], [str(n)])) for n in range(3)]
    await asyncio.sleep(0)  # every call is queued
    calls[1].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[0] == [b"k0", b"0"] and results[2] == [b"k2", b"2"]


async def test_an_unreachable_redis_fails_every_caller_of_the_batch(redis_url: str) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        batches = ScriptBatches(dead, dead.register_script(ECHO))
        results = await asyncio.gather(*(batches.run([f"k{n}"], ["1"]) for n in range(3)), return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError) for result in results), results
    finally:
        await dead.aclose()


def _data(number: int) -> SessionData:
    return SessionData(
        agent_id=f"agent-{number}", user_name=f"user{number}", issuer="https://idp", subject=f"s{number}",
        groups=frozenset({f"g{number}"}),
    )  # fmt: skip


async def test_concurrent_session_lookups_each_see_their_own_session(redis_url: str) -> None:
    store = RedisSessionStore(redis_url, idle_timeout=60, absolute_timeout=3600, replica_id="batches-test")
    try:
        now = 1_000_000.0
        sessions = [await store.create(_data(n), now) for n in range(10)]
        await store.delete(sessions[3].id)
        lookups = await asyncio.gather(*(store.lookup(session.id, now + 1) for session in sessions))
        for number, (session, found) in enumerate(zip(sessions, lookups, strict=True)):
            if number == 3:
                assert found.state is SessionState.MISSING
                continue
            assert found.state is SessionState.VALID and found.session is not None
            assert found.session.data.user_name == f"user{number}" and found.session.id == session.id
        late = await asyncio.gather(store.lookup(sessions[0].id, now + 120), store.lookup(sessions[1].id, now + 2))
        assert late[0].state is SessionState.IDLE_EXPIRED and late[1].state is SessionState.VALID
    finally:
        await store.close()
