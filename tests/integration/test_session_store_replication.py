"""``[sessions.redis] wait_for_replicas``: a write that ends or narrows access counts as done only once a Redis
replica holds it (Redis ``WAIT``), against a real primary and replica.

Redis replicates asynchronously: without the wait, a revocation the primary acknowledged just before a failover
can be missing on the promoted replica, and the sessions it ended are valid again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from gateway.errors import SessionStoreUnavailable
from gateway.sessions.base import SessionData, SessionState, SessionStore, session_key
from gateway.sessions.factory import create_session_store
from gateway.settings import SessionSettings
from tests.components.redis_server import RedisServer, until_replicated

pytestmark = pytest.mark.redis

ALICE = SessionData(agent_id="agent-alice", user_name="alice", issuer="https://idp.example.com", subject="sub-a")
NOW = 1000.0


class Pair:
    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica: RedisServer | None = None

    def start_replica(self) -> RedisServer:
        self.replica = RedisServer(replica_of=self.primary.port)
        self.replica.start()
        return self.replica

    async def replica_keys(self) -> set[str]:
        assert self.replica is not None
        async with Redis.from_url(self.replica.url, decode_responses=True) as replica:
            return {str(key) for key in await replica.keys("cg:*")}


@pytest.fixture
def pair() -> Iterator[Pair]:
    pair = Pair()
    pair.primary.start()
    try:
        yield pair
    finally:
        if pair.replica is not None:
            pair.replica.close()
        pair.primary.close()


def _store(url: str, **redis: Any) -> SessionStore:
    settings = SessionSettings.model_validate({"store": "redis", "redis_url": url, "redis": redis})
    return create_session_store(settings, "replica-test")


@pytest.fixture
async def waiting_store(pair: Pair) -> AsyncIterator[SessionStore]:
    store = _store(pair.primary.url, wait_for_replicas=1, wait_for_replicas_timeout_seconds=0.3)
    yield store
    await store.close()


def _writes(store: SessionStore) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every write that ends or narrows access, each on a fresh session of Alice's."""
    return {
        "revoke_agent": lambda: store.revoke_agent(ALICE.agent_id),
        "revoke_agent_if_any": lambda: store.revoke_agent_if_any(ALICE.agent_id),
        "revoke_agents": lambda: store.revoke_agents([ALICE.agent_id, "agent-bob"]),
        "update_agent_groups": lambda: store.update_agent_groups(ALICE.agent_id, frozenset({"voice"})),
    }


async def test_a_revocation_returns_once_the_replica_holds_it(pair: Pair, waiting_store: SessionStore) -> None:
    pair.start_replica()
    await until_replicated(pair.primary.url)
    session = await waiting_store.create(ALICE, NOW)
    key = "cg:s:" + session_key(session.id)
    for _ in range(100):  # the create is not waited for: let it reach the replica first
        if key in await pair.replica_keys():
            break
        await asyncio.sleep(0.02)
    count, _ = await waiting_store.revoke_agent(ALICE.agent_id)
    assert count == 1
    # Read at once, no polling: WAIT returned only after the replica acknowledged the deletion.
    assert key not in await pair.replica_keys()
    assert "cg:a:" + ALICE.agent_id not in await pair.replica_keys()


async def test_a_logout_returns_once_the_replica_holds_it(pair: Pair, waiting_store: SessionStore) -> None:
    pair.start_replica()
    await until_replicated(pair.primary.url)
    session = await waiting_store.create(ALICE, NOW)
    assert await waiting_store.delete(session.id) == ALICE
    assert "cg:s:" + session_key(session.id) not in await pair.replica_keys()


@pytest.mark.parametrize("write", ["revoke_agent", "revoke_agent_if_any", "revoke_agents", "update_agent_groups"])
async def test_a_write_no_replica_confirms_is_refused_and_says_why(
    pair: Pair, waiting_store: SessionStore, write: str
) -> None:
    session = await waiting_store.create(ALICE, NOW)  # no replica at all
    started = time.monotonic()
    with pytest.raises(SessionStoreUnavailable) as caught:
        await _writes(waiting_store)[write]()
    assert 0.25 < time.monotonic() - started < 0.9  # the WAIT's own timeout, then the refusal
    assert "wait_for_replicas" in caught.value.message
    assert caught.value.detail == "0 of 1 replicas confirmed"
    if write != "update_agent_groups":  # done on the primary all the same: never less safe than without the wait
        assert (await waiting_store.lookup(session.id, NOW + 1)).state is SessionState.MISSING


async def test_a_logout_no_replica_confirms_is_refused(waiting_store: SessionStore) -> None:
    session = await waiting_store.create(ALICE, NOW)
    with pytest.raises(SessionStoreUnavailable):
        await waiting_store.delete(session.id)


async def test_the_writes_are_confirmed_again_once_the_replica_is_back(pair: Pair, waiting_store: SessionStore) -> None:
    replica = pair.start_replica()
    await until_replicated(pair.primary.url)
    replica.kill()
    await waiting_store.create(ALICE, NOW)
    with pytest.raises(SessionStoreUnavailable):
        await waiting_store.revoke_agent(ALICE.agent_id)
    replica.restart()
    await until_replicated(pair.primary.url)
    await waiting_store.create(ALICE, NOW)
    count, _ = await waiting_store.revoke_agent(ALICE.agent_id)
    assert count == 1


async def test_without_wait_for_replicas_a_revocation_does_not_wait_for_any(pair: Pair) -> None:
    store = _store(pair.primary.url)
    try:
        await store.create(ALICE, NOW)
        count, _ = await store.revoke_agent(ALICE.agent_id)
        assert count == 1
    finally:
        await store.close()


def test_a_wait_as_long_as_the_socket_timeout_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError) as caught:
        SessionSettings.model_validate(
            {
                "store": "redis",
                "redis_url": "redis://127.0.0.1:6379/0",
                "redis": {"wait_for_replicas": 1, "wait_for_replicas_timeout_seconds": 1.0},
            }
        )
    assert "wait_for_replicas_timeout_seconds must be below socket_timeout_seconds" in str(caught.value)


def _replication_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings about replicas (a Redis user without INFO is also told the eviction check is off)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "channelgate.sessions" and r.levelno >= logging.WARNING and "replica" in r.getMessage()
    ]


async def test_a_replica_no_revocation_waits_for_is_named_once_with_the_setting_that_covers_it(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    pair.start_replica()
    await until_replicated(pair.primary.url)
    store = _store(pair.primary.url)  # wait_for_replicas = 0
    try:
        with caplog.at_level(logging.INFO, logger="channelgate.sessions"):
            for _ in range(3):
                await store.heartbeat()
    finally:
        await store.close()
    [warning] = _replication_warnings(caplog)
    assert "1 connected replica(s)" in warning and "not waited for" in warning
    assert "set [sessions.redis] wait_for_replicas = 1" in warning


async def test_too_few_replicas_for_the_wait_is_logged_when_it_starts_and_when_it_ends(
    pair: Pair, waiting_store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    replica = pair.start_replica()
    await until_replicated(pair.primary.url)
    with caplog.at_level(logging.INFO, logger="channelgate.sessions"):
        await waiting_store.heartbeat()
        assert _replication_warnings(caplog) == []  # one replica, wait_for_replicas = 1: as it should be
        replica.kill()
        async with Redis.from_url(pair.primary.url, decode_responses=True) as primary:
            for _ in range(100):  # the primary sees the link drop at once, but asynchronously
                if (await primary.info("replication"))["connected_slaves"] == 0:
                    break
                await asyncio.sleep(0.02)
        await waiting_store.heartbeat()
        await waiting_store.heartbeat()
        [warning] = _replication_warnings(caplog)
        assert "0 connected replica(s)" in warning and "every logout and revocation is refused" in warning
        replica.restart()
        await until_replicated(pair.primary.url)
        await waiting_store.heartbeat()
    assert any("match wait_for_replicas (1) again" in r.getMessage() for r in caplog.records)
    assert len(_replication_warnings(caplog)) == 1


async def test_a_redis_user_not_allowed_info_keeps_its_heartbeat_and_is_told_the_check_is_off(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    async with Redis.from_url(pair.primary.url) as admin:
        await admin.acl_setuser(
            "gateway", enabled=True, passwords=["+gateway-password"], keys=["*"], channels=["*"],
            categories=["+@all"], commands=["-info"],
        )  # fmt: skip
    store = _store(pair.primary.url.replace("redis://", "redis://gateway:gateway-password@"))
    try:
        with caplog.at_level(logging.INFO, logger="channelgate.sessions"):
            await store.heartbeat()
            await store.heartbeat()  # told once, then not asked again
            session = await store.create(ALICE, NOW)
            assert (await store.lookup(session.id, NOW + 1)).state is SessionState.VALID
    finally:
        await store.close()
    [warning] = _replication_warnings(caplog)
    assert "cannot read the Redis primary's replicas" in warning and "no permissions" in warning
    assert "gateway-password" not in warning
