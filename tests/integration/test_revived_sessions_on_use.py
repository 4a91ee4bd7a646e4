"""A session used before the sweep after a session-store outage reached it is checked against its agent's saved
ends too (gateway/deprovision/revived.py ``RevivedSessions.believed``), against a real Redis and the migrated
database on SQLite and PostgreSQL.

The check against agents' rows cannot see a logout: the agent stays active. Without this check a copy of a
logged-out session's cookie, brought back by a Redis restart, worked from Redis answering again until the sweep's
next turn. No sweep runs here (no app, no heartbeat): what refuses the session is the check on use alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.audit.writer import AuditLog
from gateway.deprovision.logouts import Logouts
from gateway.deprovision.revived import CLOCK_MARGIN_SECONDS, RevivedSessions
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.sessions.base import Session, SessionData, SessionState, session_key
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessQuery, AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from gateway.storage.quick_reads import QuickReads
from gateway.storage.session_ends import EndKind, SessionEnd, SessionEndRepository
from tests.components.session_stores import redis_store
from tests.integration.test_revived_logouts_sweep import _at

pytestmark = [pytest.mark.redis]
LIFETIME = 3600.0
ISSUER = "https://idp.example"


@dataclass
class World:
    agents: AgentRepository
    ends: SessionEndRepository
    logouts: Logouts
    log: AccessLogRepository
    store: RedisSessionStore
    revived: RevivedSessions
    alice: SessionData
    now: float


@pytest.fixture
async def world(database_url: str, redis_url: str) -> AsyncIterator[World]:
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    reads = QuickReads.open(DatabaseSettings(url=SecretStr(database_url)), database.engine)
    log = AccessLogRepository(database.engine)
    audit = AuditLog(log)
    agents = AgentRepository(database.engine, reads)
    ends = SessionEndRepository(database.engine, reads)
    logouts = Logouts(database, ends, audit)
    store = redis_store(redis_url, "replica-a")
    now = time.time()
    agent = await agents.link_or_create_from_login(
        ISSUER, "s-1", "alice", None, None, _at(now - 3000), link_by="external_id_is_sub", email_verified=False
    )
    alice = SessionData(agent_id=agent.id, user_name="alice", issuer=ISSUER, subject="s-1", idp_session_id="A")
    revived = RevivedSessions(
        agents, store, audit, Metrics(), session_lifetime_seconds=LIFETIME, logouts=logouts, clock=lambda: now
    )
    yield World(agents, ends, logouts, log, store, revived, alice, now)
    await store.close()
    await reads.dispose()
    await database.dispose()


async def _refused_on_use(world: World) -> list[AccessRecord]:
    records = await world.log.search(AccessQuery(kind="sessions_revoked"))
    return [r for r in records if (r.detail or {}).get("refused") == "on use"]


async def _is_gone(world: World, session: Session) -> bool:
    return (await world.store.lookup(session.id, world.now)).state is SessionState.MISSING


async def test_a_copy_of_a_logged_out_sessions_cookie_is_refused_on_use_and_the_session_ended(world: World) -> None:
    logged_out = await world.store.create(world.alice, world.now - 200)
    other_tab = await world.store.create(world.alice, world.now - 200)
    await world.logouts.remember(
        [SessionEnd(_at(world.now - 100), EndKind.LOGOUT, world.alice.agent_id, session_key=session_key(logged_out.id))]
    )

    assert not await world.revived.believed(logged_out)
    assert await world.revived.believed(other_tab)  # only the session the logout named

    assert await _is_gone(world, logged_out) and not await _is_gone(world, other_tab)
    [record] = await _refused_on_use(world)
    assert record.agent_name == "alice" and record.reason is not None and "refused when used" in record.reason
    assert record.detail is not None and record.detail["ended"] == "logout"


async def test_an_agent_wide_end_refuses_older_sessions_and_spares_those_signed_in_to_after_it(world: World) -> None:
    before = await world.store.create(world.alice, world.now - 400)
    after = await world.store.create(world.alice, world.now)
    await world.logouts.remember([SessionEnd(_at(world.now - 300), EndKind.AGENT, world.alice.agent_id)])

    assert not await world.revived.believed(before)
    assert await world.revived.believed(after)


async def test_an_idp_session_end_refuses_only_that_idp_sessions_sessions(world: World) -> None:
    from_a = await world.store.create(world.alice, world.now - 100)
    from_b = await world.store.create(replace(world.alice, idp_session_id="B"), world.now - 100)
    await world.logouts.remember([SessionEnd(_at(world.now - 50), EndKind.IDP_SESSION, world.alice.agent_id, sid="A")])

    assert not await world.revived.believed(from_a)
    assert await world.revived.believed(from_b)


async def test_a_session_signed_in_to_within_the_clock_margin_after_an_agent_wide_end_is_refused(
    world: World,
) -> None:
    """Replicas stamp with their own clocks: one running ahead may stamp a session the end did end as later."""
    end_at = world.now - 100
    soon_after = await world.store.create(world.alice, end_at + CLOCK_MARGIN_SECONDS - 1)
    await world.logouts.remember([SessionEnd(_at(end_at), EndKind.AGENT, world.alice.agent_id)])

    assert not await world.revived.believed(soon_after)


async def test_an_end_kept_in_process_because_its_write_failed_refuses_the_session_too(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await world.store.create(world.alice, world.now - 100)

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StorageError("database write failed on sqlite:///…", detail="database is locked")

    monkeypatch.setattr(world.ends, "add", down)
    with pytest.raises(StorageError):
        await world.logouts.remember(
            [SessionEnd(_at(world.now - 50), EndKind.LOGOUT, world.alice.agent_id, session_key=session_key(session.id))]
        )

    assert not await world.revived.believed(session)


async def test_a_disabled_agents_session_is_refused_and_ended_as_before(world: World) -> None:
    session = await world.store.create(world.alice, world.now - 100)
    await world.agents.set_active(world.alice.agent_id, False, "left", _at(world.now))

    assert not await world.revived.believed(session)
    assert await _is_gone(world, session)


async def test_a_session_no_end_names_is_believed_and_kept(world: World) -> None:
    session = await world.store.create(world.alice, world.now - 100)
    await world.logouts.remember(
        [SessionEnd(_at(world.now - 50), EndKind.LOGOUT, "another-agent", session_key="0" * 64)]
    )

    assert await world.revived.believed(session)
    assert not await _is_gone(world, session)


async def test_the_record_of_a_session_refused_on_use_is_kept_when_its_write_fails_and_written_at_the_next_turn(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing ended goes unrecorded: the session is refused and ended all the same, the record written later."""
    session = await world.store.create(world.alice, world.now - 100)
    await world.logouts.remember(
        [SessionEnd(_at(world.now - 50), EndKind.LOGOUT, world.alice.agent_id, session_key=session_key(session.id))]
    )
    real = world.log.append

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StorageError("database write failed on sqlite:///…", detail="database is locked")

    monkeypatch.setattr(world.log, "append", down)
    assert not await world.revived.believed(session)
    assert await _is_gone(world, session)
    assert await _refused_on_use(world) == []

    monkeypatch.setattr(world.log, "append", real)
    await world.revived.sweep_if_due()
    [record] = await _refused_on_use(world)
    assert record.detail is not None and record.detail["ended"] == "logout"


async def test_the_records_of_sessions_refused_at_the_same_time_are_each_written_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests and the sweep task keep and write records concurrently: none is written twice or dropped."""
    first, second = [await world.store.create(world.alice, world.now - 100) for _ in range(2)]
    await world.logouts.remember(
        [
            SessionEnd(_at(world.now - 50), EndKind.LOGOUT, world.alice.agent_id, session_key=session_key(s.id))
            for s in (first, second)
        ]
    )
    real = world.log.append

    async def slow(*args: Any, **kwargs: Any) -> list[AccessRecord]:
        await asyncio.sleep(0.05)  # the other request's refusal arrives while this write is in flight
        return await real(*args, **kwargs)

    monkeypatch.setattr(world.log, "append", slow)
    assert list(await asyncio.gather(world.revived.believed(first), world.revived.believed(second))) == [False, False]
    assert len(await _refused_on_use(world)) == 2


async def test_a_session_is_found_among_many_saved_logouts_of_its_agent(world: World) -> None:
    """The ends that may cover a session are each one index lookup, not a page of the agent's other logouts."""
    named = await world.store.create(world.alice, world.now - 200)
    other = await world.store.create(world.alice, world.now - 200)
    many = [
        SessionEnd(_at(world.now - 100 + i / 10), EndKind.LOGOUT, world.alice.agent_id, session_key=f"{i:064x}")
        for i in range(60)
    ]
    mine = SessionEnd(_at(world.now - 10), EndKind.LOGOUT, world.alice.agent_id, session_key=session_key(named.id))
    await world.logouts.remember([*many, mine])

    assert not await world.revived.believed(named)
    assert await world.revived.believed(other)
