"""A deprovisioning's kill is saved as an agent-wide end (gateway/deprovision/kill.py, first_kills.py), so a Redis
restart that brings the agent's sessions back is answered even once the agent is enabled again.

The sequence the review found: an account is compromised, deprovisioned, its password reset and the agent enabled
again within the hour; then Redis restarts from a snapshot taken before the deprovisioning. The agent's row says
active, so the agents' sweep passes it over: only the saved end lets the sweep end the stolen session again. Real
redis-server (snapshots only), the migrated database on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.audit.writer import AuditLog
from gateway.deprovision.kill import SessionKiller
from gateway.deprovision.logouts import Logouts
from gateway.deprovision.revived import RevivedSessions
from gateway.errors import ChannelgateError, StorageError
from gateway.metrics import Metrics
from gateway.sessions.base import SessionData, SessionState
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository
from gateway.storage.agents import Agent, AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from gateway.storage.session_ends import EndKind, SessionEnd, SessionEndRepository
from tests.components.redis_server import RedisServer
from tests.components.session_stores import redis_store
from tests.integration.test_revived_sessions import _command

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


@dataclass
class World:
    database: Database
    agents: AgentRepository
    ends: SessionEndRepository
    logouts: Logouts
    audit: AuditLog
    store: RedisSessionStore
    killer: SessionKiller


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test alone (no append-only file), so it can be killed and restarted from a snapshot."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def world(database_url: str, own_redis: RedisServer) -> AsyncIterator[World]:
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    agents = AgentRepository(database.engine)
    audit = AuditLog(AccessLogRepository(database.engine))
    ends = SessionEndRepository(database.engine)
    logouts = Logouts(database, ends, audit)
    store = redis_store(own_redis.url, "replica-a")
    killer = SessionKiller(database, agents, store, None, audit, Metrics(), 1.0, logouts=logouts)
    yield World(database, agents, ends, logouts, audit, store, killer)
    await store.close()
    await database.dispose()


async def _agent(world: World, name: str) -> Agent:
    return await world.agents.link_or_create_from_login(
        "https://idp.example", f"sub-{name}", name, None, None, datetime.now(UTC),
        link_by="user_name_is_preferred_username", email_verified=False,
    )  # fmt: skip


def _session(agent: Agent) -> SessionData:
    return SessionData(agent.id, agent.user_name, "https://idp.example", f"sub-{agent.user_name}")


async def _sweep_once_redis_answers(sweep: RevivedSessions) -> int:
    for _ in range(50):
        try:
            return await sweep.sweep_if_due()
        except ChannelgateError:
            await asyncio.sleep(0.2)
    raise AssertionError("the sweep never completed")


async def test_a_deprovisioned_agent_enabled_again_does_not_get_its_revived_stolen_session_back(
    world: World, own_redis: RedisServer
) -> None:
    mallory = await _agent(world, "mallory")
    stolen = await world.store.create(_session(mallory), time.time())
    assert _command(own_redis, "SAVE").startswith(b"+OK")  # the snapshot holds the stolen session
    before = datetime.now(UTC)

    await world.killer.deprovision(mallory.id, reason="compromised", actor="admin", source="admin")
    await world.agents.set_active(mallory.id, True, None, datetime.now(UTC))  # password reset, enabled again
    [end] = await world.ends.since(before)
    assert (end.kind, end.agent_id) == (EndKind.AGENT, mallory.id) and end.ended_at >= before

    own_redis.kill()
    own_redis.start()  # from the snapshot: the stolen session is back, valid
    assert (await world.store.lookup(stolen.id, time.time())).state is SessionState.VALID

    sweep = RevivedSessions(world.agents, world.store, world.audit, Metrics(), session_lifetime_seconds=3600,
                            logouts=world.logouts)  # fmt: skip
    assert await _sweep_once_redis_answers(sweep) == 1
    assert (await world.store.lookup(stolen.id, time.time())).state is not SessionState.VALID


async def test_the_first_kills_of_a_batch_are_saved_in_one_insert(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = [await _agent(world, name) for name in ("ann", "ben", "cid")]
    for agent in agents[:2]:  # cid has no session: nothing of it to end again
        await world.store.create(_session(agent), time.time())
    inserts: list[list[SessionEnd]] = []
    real = world.ends.add

    async def counted(ends: list[SessionEnd], *args: Any, **kwargs: Any) -> None:
        inserts.append(list(ends))
        await real(ends, *args, **kwargs)

    monkeypatch.setattr(world.ends, "add", counted)
    await asyncio.gather(*(world.killer.deprovision(a.id, reason="left", actor="scim", source="scim") for a in agents))

    assert [sorted(end.agent_id for end in batch) for batch in inserts] == [sorted(a.id for a in agents[:2])]


async def test_a_kill_whose_end_cannot_be_saved_still_ends_the_sessions_and_keeps_the_end(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails only the end's insert: the sessions end, the deprovisioning completes, and the end is
    kept in process and written at the next flush (the sweep task's turn, or shutdown)."""
    mallory = await _agent(world, "mallory")
    session = await world.store.create(_session(mallory), time.time())
    real = world.ends.add
    failing = [True]

    async def down(*args: Any, **kwargs: Any) -> None:
        if failing[0]:
            raise StorageError("database write failed", detail="database is locked")
        await real(*args, **kwargs)

    monkeypatch.setattr(world.ends, "add", down)
    result = await world.killer.deprovision(mallory.id, reason="compromised", actor="admin", source="admin")

    assert result.sessions_revoked == 1
    assert (await world.store.lookup(session.id, time.time())).state is not SessionState.VALID
    assert await world.ends.since(datetime.fromtimestamp(0, UTC)) == []
    failing[0] = False
    await world.logouts.flush()
    assert [e.agent_id for e in await world.ends.since(datetime.fromtimestamp(0, UTC))] == [mallory.id]
