"""The deprovisioning trigger's transaction (SessionKiller.deprovision) on SQLite by ``sqlite3`` directly, on SQLite
through the engine, and on PostgreSQL: the agent is disabled with its access-log record and its run queued in one
transaction; a repeated trigger joins the run still going; an agent already offboarded is not queued again; the
mass-deletion guard holds the irreversible steps; an unknown agent changes nothing; both SQLite paths write the
same rows; the sessions end before the disable's transaction commits, and again after it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import Capability
from gateway.audit.writer import AuditLog
from gateway.deprovision.kill import SessionKiller
from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.deprovision.runs import MassDeletionGuard, RunPlanner
from gateway.errors import NotFound
from gateway.metrics import Metrics
from gateway.sessions.base import Revocation, SessionData
from gateway.sessions.memory import MemorySessionStore
from gateway.settings import MassDeletionGuardSettings
from gateway.storage.access_log import AccessLogRepository, AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.groups import GroupRepository
from gateway.storage.pipeline import PipelineRepository
from scim.triggers import GatewayLifecycle
from tests.components.echo_gateway import eventually
from tests.contracts.three_way.agent_rows import insert_agent

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Channel:
    """What the planner reads of a connector: its capabilities."""

    channel: str
    capabilities: frozenset[Capability]


CONNECTORS = {
    "chat": Channel("chat", frozenset({Capability.REVOKE_TOKENS, Capability.VERIFY, Capability.TICKETS})),
    "phone": Channel("phone", frozenset({Capability.SEATS, Capability.VERIFY})),
}


def _killer(
    database: Database,
    *,
    direct: bool,
    guard: MassDeletionGuardSettings | None = None,
    sessions: MemorySessionStore | None = None,
) -> SessionKiller:
    engine, metrics = database.engine, Metrics()
    agents, runs = AgentRepository(engine), PipelineRepository(engine, direct=direct)
    audit = AuditLog(AccessLogRepository(engine))
    guard = guard or MassDeletionGuardSettings(enabled=False)
    planner = RunPlanner(CONNECTORS, runs, MassDeletionGuard(guard, agents, runs), audit, metrics)  # type: ignore[arg-type]
    sessions = sessions or MemorySessionStore(900, 3600, "replica-1")
    return SessionKiller(database, agents, sessions, None, audit, metrics, 1.0, planner, runs)


@pytest.fixture
def killer(database: Database, backend: str) -> SessionKiller:
    return _killer(database, direct=backend == "direct")


async def _agent(engine: AsyncEngine, user_name: str) -> str:
    return await insert_agent(engine, T0, user_name, version=3)


async def _log(engine: AsyncEngine, agent_id: str) -> list[AccessRecord]:
    return await AccessLogRepository(engine).for_agent(agent_id)


async def test_a_trigger_disables_the_agent_records_it_and_queues_its_run_in_one_transaction(
    database: Database, killer: SessionKiller
) -> None:
    alice = await _agent(database.engine, "Alice")
    result = await killer.deprovision("alice", reason="left", actor="admin", source="admin_api")
    agent = await AgentRepository(database.engine).get(alice)
    assert agent is not None and not agent.active and agent.disabled_reason == "left" and agent.version == 4
    assert result.agent == agent
    assert result.run is not None and result.run.state is RunState.RUNNING and result.run.agent_id == alice
    pipeline = PipelineRepository(database.engine, direct=False)
    assert await pipeline.get_run(result.run.id) == result.run
    steps = {(s.channel, s.step): s.state for s in await pipeline.steps_of([result.run.id])}
    assert steps == {
        ("chat", StepKind.REVOKE): StepState.PENDING,
        ("chat", StepKind.HAND_OVER): StepState.PENDING,
        ("chat", StepKind.VERIFY): StepState.WAITING,
        ("phone", StepKind.REVOKE): StepState.PENDING,
        ("phone", StepKind.VERIFY): StepState.WAITING,
        ("phone", StepKind.REMOVE): StepState.WAITING,
    }
    records = await _log(database.engine, alice)
    assert [(r.kind, r.decision, r.actor, r.agent_name) for r in records] == [
        ("deprovision", "disabled", "admin", "Alice"),
        ("sessions_revoked", "revoked", "admin", "Alice"),
    ]
    assert records[0].detail == {"source": "admin_api", "step": "disable"}


async def test_a_repeated_trigger_joins_the_run_still_going(database: Database, killer: SessionKiller) -> None:
    alice = await _agent(database.engine, "alice")
    first = await killer.deprovision(alice, reason="left", actor="idp", source="scim")
    again = await killer.deprovision(alice, reason="left", actor="idp", source="scim")
    assert first.run is not None and again.run is not None and again.run.id == first.run.id
    assert len(await PipelineRepository(database.engine).runs_of_agent(alice)) == 1


async def test_an_agent_already_offboarded_is_not_queued_again(database: Database, killer: SessionKiller) -> None:
    alice = await _agent(database.engine, "alice")
    first = await killer.deprovision(alice, reason="left", actor="idp", source="scim")
    assert first.run is not None
    async with database.begin() as conn:
        await PipelineRepository(database.engine).set_run_state(first.run.id, RunState.DONE, T0, conn=conn)
    again = await killer.deprovision(alice, reason="left", actor="idp", source="scim")
    assert again.run is not None and again.run.id == first.run.id and again.run.state is RunState.DONE
    assert len(await PipelineRepository(database.engine).runs_of_agent(alice)) == 1


async def test_the_guard_holds_the_irreversible_steps_when_it_trips(database: Database, backend: str) -> None:
    guard = MassDeletionGuardSettings(enabled=True, max_share=0.1, min_agents=1)
    killer = _killer(database, direct=backend == "direct", guard=guard)
    ids = [await _agent(database.engine, f"agent{n}") for n in range(3)]
    first = await killer.deprovision(ids[0], reason="sync", actor="idp", source="scim")
    second = await killer.deprovision(ids[1], reason="sync", actor="idp", source="scim")
    assert first.run is not None and first.run.state is RunState.RUNNING
    assert second.run is not None and second.run.state is RunState.HELD
    steps = await PipelineRepository(database.engine).steps_of([second.run.id])
    assert {(s.channel, s.step): s.state for s in steps}[("chat", StepKind.HAND_OVER)] is StepState.HELD
    held = [r for r in await _log(database.engine, ids[1]) if r.kind == "deprovision_held"]
    assert [r.detail for r in held] == [{"run": second.run.id, "recent": 2, "workforce": 3}]


async def test_an_unknown_agent_is_not_found_and_changes_nothing(database: Database, killer: SessionKiller) -> None:
    await _agent(database.engine, "alice")
    with pytest.raises(NotFound):
        await killer.deprovision("nobody", reason="left", actor="admin", source="cli")
    assert await AccessLogRepository(database.engine).tail() == []
    assert await PipelineRepository(database.engine).runs_in_state(list(RunState)) == []


async def test_both_sqlite_paths_write_the_same_rows(database: Database, backend: str) -> None:
    if backend != "direct":
        return  # the comparison is between SQLite's two paths; the others run the contract above
    ids = {direct: await _agent(database.engine, f"agent-{direct}") for direct in (True, False)}
    for direct, agent_id in ids.items():
        await _killer(database, direct=direct).deprovision(agent_id, reason="left", actor="a", source="cli")
    path = database.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as db:

        def rows(agent_id: str) -> list[object]:
            agent = db.execute(
                "SELECT active, disabled_reason, version, typeof(updated_at), length(updated_at) FROM agents "
                "WHERE id = ?",
                (agent_id,),
            ).fetchall()
            log = db.execute(
                "SELECT kind, agent_name = (SELECT user_name FROM agents WHERE id = ?), channel, decision, reason, "
                "actor, typeof(detail), json_remove(detail, '$.run', '$.replicas_confirmed'), length(time) "
                "FROM access_log WHERE agent_id = ? ORDER BY seq",
                (agent_id, agent_id),
            ).fetchall()
            runs = db.execute(
                "SELECT source, actor, reason, successor, state, length(created_at), finished_at, approved_by "
                "FROM deprovision_runs WHERE agent_id = ?",
                (agent_id,),
            ).fetchall()
            steps = db.execute(
                "SELECT s.channel, s.step, s.state, s.attempts, s.next_attempt_at = r.created_at, s.lease_owner, "
                "substr(s.idempotency_key, 1, 12), s.updated_at = r.created_at FROM deprovision_steps s "
                "JOIN deprovision_runs r ON r.id = s.run_id WHERE r.agent_id = ? ORDER BY s.id",
                (agent_id,),
            ).fetchall()
            return [agent, log, runs, steps]

        assert rows(ids[True]) == rows(ids[False])


@asynccontextmanager
async def _writes_held(database: Database, agent_id: str) -> AsyncIterator[None]:
    """Another writer holds the agent's row (PostgreSQL) or the database's write lock (SQLite) until exit, as the
    transactions of a deprovisioning storm queued before this one would."""
    url = database.engine.url
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        other = sqlite3.connect(url.database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.rollback()
            other.close()
        return
    async with database.engine.connect() as conn:
        await conn.execute(text("SELECT id FROM agents WHERE id = :id FOR UPDATE"), {"id": agent_id})
        yield
        await conn.rollback()


def _login(agent_id: str) -> SessionData:
    return SessionData(agent_id=agent_id, user_name="alice", issuer="https://idp.example.com", subject="sub-alice")


async def test_the_sessions_end_before_the_disable_commits_and_a_login_racing_it_is_ended_after(
    database: Database, backend: str
) -> None:
    alice = await _agent(database.engine, "alice")
    store = MemorySessionStore(900, 3600, "replica-1")
    killer = _killer(database, direct=backend == "direct", sessions=store)
    await store.create(_login(alice), time.time())
    async with _writes_held(database, alice):
        call = asyncio.create_task(killer.deprovision("alice", reason="left", actor="admin", source="admin_api"))
        await eventually(lambda: _none_left(store, alice))
        await asyncio.sleep(0.2)
        assert not call.done(), "the disable did not wait for the database: the test proves nothing"
        # A login that read the agent while it was still active, between the first kill and the disable.
        await store.create(_login(alice), time.time())
    result = await call
    assert result.sessions_revoked == 2
    assert await store.sessions_of(alice, time.time()) == []
    agent = await AgentRepository(database.engine).get(alice)
    assert agent is not None and not agent.active
    records = await _log(database.engine, alice)
    assert [(r.kind, (r.detail or {}).get("sessions")) for r in records] == [
        ("deprovision", None),
        ("sessions_revoked", 2),
    ]


async def _none_left(store: MemorySessionStore, agent_id: str) -> bool:
    return not await store.sessions_of(agent_id, time.time())


# SCIM writes through the engine: SQLite through it and PostgreSQL (there is no direct-SQLite SCIM path).
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("engine", id="sqlite-engine"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
    indirect=True,
)
async def test_a_scim_deactivation_ends_the_sessions_inside_its_transaction_and_again_after_the_commit(
    database: Database,
) -> None:
    engine = database.engine
    alice = await _agent(engine, "alice")
    store = MemorySessionStore(900, 3600, "replica-1")
    killer = _killer(database, direct=False, sessions=store)
    lifecycle = GatewayLifecycle(killer, store, GroupRepository(engine), AgentRepository(engine))
    await store.create(_login(alice), time.time())
    async with database.begin() as conn:
        await conn.execute(text("UPDATE agents SET active = false WHERE id = :id"), {"id": alice})
        await lifecycle.deactivating(alice, conn=conn)
        assert await _none_left(store, alice), "the sessions waited for the SCIM transaction's commit"
        await store.create(_login(alice), time.time())  # a login that read the agent still active
    await lifecycle.deactivated(alice, was_active=True)
    assert await _none_left(store, alice)
    records = await _log(engine, alice)
    assert [(r.kind, (r.detail or {}).get("sessions")) for r in records] == [
        ("deprovision", None),
        ("sessions_revoked", 2),
    ]


async def test_the_kill_after_the_disable_broadcasts_again_only_for_a_session_started_in_between(
    database: Database, backend: str
) -> None:
    alice = await _agent(database.engine, "alice")
    bob = await _agent(database.engine, "bob")
    store = MemorySessionStore(900, 3600, "replica-1")
    killer = _killer(database, direct=backend == "direct", sessions=store)
    seen: list[str] = []

    async def listen() -> None:
        async for revocation in store.revocations():
            seen.append(revocation.agent_id)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    await store.create(_login(alice), time.time())
    quiet = await killer.deprovision("alice", reason="left", actor="admin", source="admin_api")
    await store.create(replace(_login(bob), user_name="bob"), time.time())
    async with _writes_held(database, bob):
        call = asyncio.create_task(killer.deprovision("bob", reason="left", actor="admin", source="admin_api"))
        await eventually(lambda: _none_left(store, bob))
        await store.create(replace(_login(bob), user_name="bob"), time.time())  # a login racing the first kill
    raced = await call
    await asyncio.sleep(0.05)
    listener.cancel()

    assert seen == [alice, bob, bob]
    assert (quiet.sessions_revoked, raced.sessions_revoked) == (1, 2)
    assert quiet.replicas_confirmed == raced.replicas_confirmed == frozenset({"replica-1"})


class _SlowAcks(MemorySessionStore):
    """Replicas that take their time closing the agent's connections: acknowledgements wait until released."""

    def __init__(self) -> None:
        super().__init__(900, 3600, "replica-1")
        self.released = asyncio.Event()
        self.waiting = asyncio.Event()

    async def wait_for_acks(self, revocation: Revocation, timeout: float) -> tuple[set[str], set[str]]:
        self.waiting.set()
        await self.released.wait()
        return await super().wait_for_acks(revocation, timeout)


async def test_the_disable_waits_until_every_replica_acknowledged_the_first_kill(
    database: Database, backend: str
) -> None:
    alice = await _agent(database.engine, "alice")
    store = _SlowAcks()
    killer = _killer(database, direct=backend == "direct", sessions=store)
    await store.create(_login(alice), time.time())

    call = asyncio.create_task(killer.deprovision("alice", reason="left", actor="admin", source="admin_api"))
    await asyncio.wait_for(store.waiting.wait(), timeout=5)
    await asyncio.sleep(0.1)
    agent = await AgentRepository(database.engine).get(alice)
    assert agent is not None and agent.active, "the disable did not wait for the first kill's acknowledgements"
    assert await _none_left(store, alice)
    store.released.set()
    result = await call
    assert not result.agent.active and result.replicas_confirmed == frozenset({"replica-1"})
