"""The batched first kill of concurrent deprovisionings (gateway/deprovision/first_kills.py), on SQLite and
PostgreSQL, through the quick reader as the gateway wires it: every caller gets its own agent and what ended, the
calls arriving while a batch is in flight share the next round trip, two calls naming one agent do not count its
sessions twice, an unknown name is answered as not found, and a failed lookup fails every caller of its batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from gateway.deprovision.first_kills import FirstKills
from gateway.errors import StorageError
from gateway.sessions.base import Revocation, SessionData
from gateway.sessions.memory import MemorySessionStore
from gateway.settings import DatabaseSettings
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.quick_reads import QuickReads

ISSUER = "https://idp.example.com"
NOW = time.time()


class CountingStore(MemorySessionStore):
    """The in-process store, counting the round trips the batches make to it."""

    def __init__(self) -> None:
        super().__init__(900, 3600, "replica-1")
        self.batches: list[int] = []

    async def revoke_agents(self, agent_ids: Sequence[str]) -> list[tuple[int, Revocation]]:
        self.batches.append(len(agent_ids))
        await asyncio.sleep(0.01)  # a round trip: later callers arrive while it is in flight
        return await super().revoke_agents(agent_ids)


@pytest.fixture
async def agents(database: Database, database_url: str) -> AsyncIterator[AgentRepository]:
    reads = QuickReads.open(DatabaseSettings(url=SecretStr(database_url)), database.engine)
    yield AgentRepository(database.engine, reads)
    await reads.dispose()


async def _agent_with_sessions(agents: AgentRepository, store: MemorySessionStore, name: str, sessions: int) -> str:
    agent = await agents.link_or_create_from_login(
        ISSUER, f"sub-{name}", name, None, None, datetime.now(UTC), link_by="user_name_is_preferred_username",
        email_verified=False,
    )  # fmt: skip
    for _ in range(sessions):
        await store.create(SessionData(agent.id, name, ISSUER, f"sub-{name}"), NOW)
    return agent.id


async def test_concurrent_first_kills_share_round_trips_and_each_caller_gets_its_agent(
    agents: AgentRepository,
) -> None:
    store = CountingStore()
    ids = {f"agent{n:02d}": await _agent_with_sessions(agents, store, f"agent{n:02d}", n % 3) for n in range(30)}
    kills = FirstKills(agents, store, None)

    results = await asyncio.gather(*(kills.end(name) for name in ids))

    assert [r.agent.id if r.agent else None for r in results] == list(ids.values())
    assert [r.sessions for r in results] == [n % 3 for n in range(30)]
    assert [await store.sessions_of(agent_id, NOW) for agent_id in ids.values()] == [[]] * 30
    assert sum(store.batches) == 30 and len(store.batches) <= 3, store.batches


class StalledFirstStore(CountingStore):
    """Its first round trip hangs until released, as one to a congested store would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def revoke_agents(self, agent_ids: Sequence[str]) -> list[tuple[int, Revocation]]:
        if not self.batches:
            self.batches.append(len(agent_ids))
            await self.release.wait()
            return await MemorySessionStore.revoke_agents(self, agent_ids)
        return await super().revoke_agents(agent_ids)


async def test_a_batch_never_waits_for_the_one_before_it(agents: AgentRepository) -> None:
    store = StalledFirstStore()
    await _agent_with_sessions(agents, store, "alice", 1)
    bob = await _agent_with_sessions(agents, store, "bob", 1)
    kills = FirstKills(agents, store, None)

    stalled = asyncio.create_task(kills.end("alice"))
    while not store.batches:
        await asyncio.sleep(0.01)
    later = await asyncio.wait_for(kills.end("bob"), timeout=5)

    assert later.agent is not None and later.agent.id == bob and later.sessions == 1
    assert not stalled.done()
    store.release.set()
    assert (await stalled).sessions == 1


async def test_two_calls_naming_one_agent_count_its_sessions_once_and_an_unknown_name_is_not_found(
    agents: AgentRepository,
) -> None:
    store = CountingStore()
    alice = await _agent_with_sessions(agents, store, "alice", 2)
    kills = FirstKills(agents, store, None)

    by_name, by_id, nobody = await asyncio.gather(kills.end("ALICE"), kills.end(alice), kills.end("nobody"))

    assert by_name.agent is not None and by_id.agent is not None and by_name.agent.id == by_id.agent.id == alice
    assert by_name.sessions + by_id.sessions == 2
    assert nobody.agent is None and nobody.sessions == 0


async def test_a_failed_lookup_fails_every_caller_of_its_batch_and_the_next_batch_works(
    agents: AgentRepository, database: Database
) -> None:
    store = CountingStore()
    alice = await _agent_with_sessions(agents, store, "alice", 1)
    broken = AgentRepository(database.engine, _BrokenReads(database))
    kills = FirstKills(broken, store, None)

    outcomes = await asyncio.gather(kills.end("alice"), kills.end("bob"), return_exceptions=True)

    assert all(isinstance(o, StorageError) for o in outcomes), outcomes
    assert await store.sessions_of(alice, NOW), "a failed lookup ended sessions"
    assert (await FirstKills(agents, store, None).end("alice")).sessions == 1


class _BrokenReads(QuickReads):
    """A reader whose database is unreachable."""

    def __init__(self, database: Database) -> None:
        super().__init__(database.engine)

    async def run(self, read: object) -> object:  # type: ignore[override]
        raise StorageError("database read failed on postgresql://channelgate:***@127.0.0.1:1/x")
