"""The sweep after a session-store outage (gateway/deprovision/revived.py), against a real SQLite database and
Redis: it broadcasts only what it ended, records everything it ended even when the first write fails, spares an
agent made active again while it runs, and a sweep Redis cannot confirm does not flood every replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from gateway.audit.writer import AuditLog
from gateway.deprovision.revived import RevivedSessions
from gateway.errors import SessionStoreUnavailable, StorageError
from gateway.metrics import Metrics
from gateway.sessions.base import SessionData
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessQuery
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from tests.components.session_stores import REVOCATION_CHANNEL, T0, redis_store

pytestmark = [pytest.mark.redis]


@dataclass
class World:
    database: Database
    agents: AgentRepository
    audit: AuditLog
    log: AccessLogRepository
    store: RedisSessionStore
    url: str


@pytest.fixture
async def world(tmp_path: Path, redis_url: str) -> AsyncIterator[World]:
    url = f"sqlite+aiosqlite:///{tmp_path}/cg.db"
    await upgrade_to_head(url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(url)))
    log = AccessLogRepository(database.engine)
    store = redis_store(redis_url, "replica-a")
    yield World(database, AgentRepository(database.engine), AuditLog(log), log, store, redis_url)
    await store.close()
    await database.dispose()


async def _disabled_agents(world: World, count: int) -> list[str]:
    ids = []
    for i in range(count):
        agent = await world.agents.link_or_create_from_login(
            "https://idp.example", f"sub-{i}", f"agent{i}", None, None, datetime.now(UTC),
            link_by="user_name_is_preferred_username", email_verified=False,
        )  # fmt: skip
        await world.agents.set_active(agent.id, False, "left", datetime.now(UTC))
        ids.append(agent.id)
    return ids


async def test_a_sweep_that_ends_no_session_broadcasts_no_revocation(world: World) -> None:
    """Every replica start and every outage sweeps: it must not publish one revocation per agent disabled in the
    last ~12 h (each applied and acknowledged by every replica) when no session came back."""
    await _disabled_agents(world, 40)
    received: list[str] = []
    async with Redis.from_url(world.url, decode_responses=True) as raw:
        pubsub = raw.pubsub()
        await pubsub.subscribe(REVOCATION_CHANNEL)
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        sweep = RevivedSessions(world.agents, world.store, world.audit, Metrics(), session_lifetime_seconds=3600)
        assert await sweep.sweep_if_due() == 0  # nothing came back
        deadline = asyncio.get_running_loop().time() + 2
        while asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                received.append(message["data"])
        await pubsub.aclose()
    assert received == [], f"{len(received)} revocations broadcast for a sweep that ended no session"


class FailingOnce:
    """The real AuditLog, whose first write fails as it does while the database is unreachable."""

    def __init__(self, inner: AuditLog) -> None:
        self.inner, self.failed = inner, False

    async def write(self, *records, conn=None):  # type: ignore[no-untyped-def]
        if not self.failed:
            self.failed = True
            raise StorageError("database write failed")
        await self.inner.write(*records, conn=conn)


async def test_sessions_the_sweep_ended_are_recorded_even_when_the_first_write_fails(world: World) -> None:
    """The sweep ends the revived sessions, then writes their record; when that write fails the record is kept and
    written at the next turn (the sessions are gone by then, so a second count would be 0)."""
    [carol] = await _disabled_agents(world, 1)
    data = SessionData(agent_id=carol, user_name="agent0", issuer="https://idp.example", subject="sub-0")
    await world.store.create(data, T0)  # the session a restarted Redis brought back
    audit = FailingOnce(world.audit)
    sweep = RevivedSessions(world.agents, world.store, audit, Metrics(), session_lifetime_seconds=3600)  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        await sweep.sweep_if_due()
    assert sweep.due()
    await sweep.sweep_if_due()  # the next heartbeat: the database answers again
    assert not sweep.due()
    assert await world.store.sessions_of(carol, T0) == []
    records = await world.log.search(AccessQuery(kind="sessions_revoked"))
    assert records, "the revived session was ended but no sessions_revoked record was ever written"


async def test_an_agent_made_active_again_while_the_sweep_runs_keeps_its_new_session(world: World) -> None:
    """The inactive agents are read again just before their sessions are ended: an agent made active again (SCIM
    active true) who signs in after the first read keeps the new session."""
    [dave] = await _disabled_agents(world, 1)
    data = SessionData(agent_id=dave, user_name="agent0", issuer="https://idp.example", subject="sub-0")
    read = world.agents.inactive_since

    async def read_then_reenable(since, ids=None):  # type: ignore[no-untyped-def]
        found = await read(since, ids=ids)
        if ids is None:  # the sweep's first read: the agent is made active and signs in right after it
            await world.agents.set_active(dave, True, None, datetime.now(UTC))
            await world.store.create(data, T0)
        return found

    world.agents.inactive_since = read_then_reenable  # type: ignore[method-assign]
    sweep = RevivedSessions(world.agents, world.store, world.audit, Metrics(), session_lifetime_seconds=3600)
    await sweep.sweep_if_due()
    assert (await world.agents.get(dave)).active  # type: ignore[union-attr]
    assert len(await world.store.sessions_of(dave, T0)) == 1, "an active agent's fresh session was ended"


async def test_a_sweep_redis_cannot_confirm_stays_due_without_flooding_the_replicas(world: World) -> None:
    """[sessions.redis] wait_for_replicas = 1 while the Redis replica is down: the sweep cannot be confirmed, so it
    stays due (and every session is checked against its agent's row meanwhile), but its retries every 5 s must not
    broadcast a revocation per recently disabled agent each time."""
    await _disabled_agents(world, 20)
    store = redis_store(world.url, "replica-w", wait_for_replicas=1, wait_for_replicas_timeout=0.05)
    received = 0
    try:
        async with Redis.from_url(world.url, decode_responses=True) as raw:
            pubsub = raw.pubsub()
            await pubsub.subscribe(REVOCATION_CHANNEL)
            await pubsub.get_message(timeout=1)
            sweep = RevivedSessions(world.agents, store, world.audit, Metrics(), session_lifetime_seconds=3600)
            for _ in range(3):  # three heartbeats
                with pytest.raises(SessionStoreUnavailable):
                    await sweep.sweep_if_due()
            assert sweep.due() and sweep.checking()
            while (await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)) is not None:
                received += 1
            await pubsub.aclose()
    finally:
        await store.close()
    assert received == 0, f"{received} revocations broadcast by three sweeps for 20 agents without sessions"
