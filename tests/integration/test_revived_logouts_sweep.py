"""Remembered logouts and their replay by the sweep (gateway/deprovision/logouts.py, revived.py), against a real
Redis and the migrated database on SQLite and PostgreSQL: only logouts within the longest session lifetime are
replayed (older rows are pruned), a logout of every session spares the ones signed in to after it, and a logout
whose write fails still ended its session and is written at the sweep task's next turn."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import insert

from gateway.audit.writer import AuditLog
from gateway.deprovision.endings import SessionEndings
from gateway.deprovision.logouts import Logouts
from gateway.deprovision.revived import CLOCK_MARGIN_SECONDS, LIFETIME_MARGIN_SECONDS, RevivedSessions
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.sessions.base import Session, SessionData, session_key
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessQuery, AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from gateway.storage.schema import session_ends
from gateway.storage.session_ends import EndKind, SessionEnd, SessionEndRepository
from tests.components.session_stores import redis_store
from tests.contracts.three_way.agent_rows import insert_agent

pytestmark = [pytest.mark.redis]
LIFETIME = 3600.0
ALICE = SessionData(agent_id="a-1", user_name="alice", issuer="https://idp.example", subject="s-1", idp_session_id="A")


@dataclass
class World:
    database: Database
    ends: SessionEndRepository
    logouts: Logouts
    log: AccessLogRepository
    store: RedisSessionStore
    sweep: RevivedSessions
    now: float


@pytest.fixture
async def world(database_url: str, redis_url: str) -> AsyncIterator[World]:
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    log = AccessLogRepository(database.engine)
    audit = AuditLog(log)
    ends = SessionEndRepository(database.engine)
    logouts = Logouts(database, ends, audit)
    store = redis_store(redis_url, "replica-a")
    now = time.time()
    sweep = RevivedSessions(
        AgentRepository(database.engine), store, audit, Metrics(),
        session_lifetime_seconds=LIFETIME, logouts=logouts, clock=lambda: now,
    )  # fmt: skip
    yield World(database, ends, logouts, log, store, sweep, now)
    await store.close()
    await database.dispose()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def _recovered(world: World) -> list[AccessRecord]:
    records = await world.log.search(AccessQuery(kind="sessions_revoked"))
    return [r for r in records if (r.detail or {}).get("source") == "session-store-recovery"]


async def test_a_logout_older_than_the_longest_session_lifetime_is_not_replayed_and_is_forgotten(
    world: World,
) -> None:
    recent, old = [await world.store.create(ALICE, world.now) for _ in range(2)]
    too_old = world.now - LIFETIME - LIFETIME_MARGIN_SECONDS - 60
    await world.logouts.remember(
        [
            SessionEnd(_at(world.now - 30), EndKind.LOGOUT, ALICE.agent_id, session_key=session_key(recent.id)),
            SessionEnd(_at(too_old), EndKind.LOGOUT, ALICE.agent_id, session_key=session_key(old.id)),
        ]
    )

    assert await world.sweep.sweep_if_due() == 1

    assert [s.id for s in await world.store.sessions_of(ALICE.agent_id, world.now)] == [session_key(old.id)]
    [record] = await _recovered(world)
    assert (record.agent_name, record.detail) == (
        "alice",
        {
            "source": "session-store-recovery",
            "sessions": 1,
            "ended": "logout",
            "ended_at": _at(world.now - 30).isoformat(),
        },
    )
    assert [end.session_key for end in await world.ends.since(_at(0))] == [session_key(recent.id)]  # pruned


async def test_a_logout_of_every_session_spares_the_sessions_signed_in_to_after_it(world: World) -> None:
    await world.store.create(ALICE, world.now - 400)  # before the logout: ended again
    after = await world.store.create(ALICE, world.now)
    await world.logouts.remember([SessionEnd(_at(world.now - 300), EndKind.AGENT, ALICE.agent_id)])

    assert await world.sweep.sweep_if_due() == 1

    assert [s.id for s in await world.store.sessions_of(ALICE.agent_id, world.now)] == [session_key(after.id)]
    assert [(r.detail or {}).get("ended") for r in await _recovered(world)] == ["agent"]


async def test_a_logout_of_one_idp_session_ends_only_that_idp_sessions_sessions(world: World) -> None:
    await world.store.create(ALICE, world.now - 100)
    from_b = await world.store.create(replace(ALICE, idp_session_id="B"), world.now - 100)
    await world.logouts.remember([SessionEnd(_at(world.now - 50), EndKind.IDP_SESSION, ALICE.agent_id, sid="A")])

    assert await world.sweep.sweep_if_due() == 1

    assert [s.id for s in await world.store.sessions_of(ALICE.agent_id, world.now)] == [session_key(from_b.id)]


async def test_nothing_is_recorded_when_no_remembered_session_came_back(world: World) -> None:
    gone = await world.store.create(ALICE, world.now)
    await world.store.delete(gone.id)
    await world.logouts.remember(
        [
            SessionEnd(_at(world.now), EndKind.LOGOUT, ALICE.agent_id, session_key=session_key(gone.id)),
            SessionEnd(_at(world.now), EndKind.AGENT, ALICE.agent_id),
        ]
    )
    assert await world.sweep.sweep_if_due() == 0
    assert await _recovered(world) == []


async def test_a_logout_whose_write_fails_is_refused_but_written_at_the_next_turn(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is down when the logout is remembered: the caller gets the StorageError (not reported done),
    the logout and its record are kept, and the sweep task's next turn writes them before anything else."""
    real = world.ends.add
    calls: list[None] = []

    async def down_once(*args: Any, **kwargs: Any) -> None:
        calls.append(None)
        if len(calls) == 1:
            raise StorageError("database write failed on sqlite:///…", detail="database is locked")
        await real(*args, **kwargs)

    monkeypatch.setattr(world.ends, "add", down_once)
    end = SessionEnd(_at(world.now), EndKind.LOGOUT, ALICE.agent_id, session_key="0" * 64)
    record = AccessRecord(time=_at(world.now), kind="logout", agent_id=ALICE.agent_id, agent_name="alice")
    with pytest.raises(StorageError):
        await world.logouts.remember([end], [record])
    assert await world.ends.since(_at(0)) == []

    await world.sweep.sweep_if_due()

    assert await world.ends.since(_at(0)) == [end]
    assert [r.kind for r in await world.log.search(AccessQuery(kind="logout"))] == ["logout"]


async def test_an_end_kept_in_process_is_replayed_by_the_sweep_before_it_is_written(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep runs before the flush (so an end the database refuses cannot stop it): an end still only kept in
    process must be replayed all the same."""
    await world.store.create(ALICE, world.now - 100)

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StorageError("database write failed on sqlite:///…", detail="database is locked")

    monkeypatch.setattr(world.ends, "add", down)
    with pytest.raises(StorageError):
        await world.logouts.remember([SessionEnd(_at(world.now - 50), EndKind.AGENT, ALICE.agent_id)])

    with pytest.raises(StorageError):  # the flush after the sweep still fails
        await world.sweep.sweep_if_due()

    assert await world.store.sessions_of(ALICE.agent_id, world.now) == []
    assert not world.sweep.due()  # the sweep completed


async def test_an_end_the_database_keeps_refusing_neither_stops_the_sweep_nor_stays_forever(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("gateway.deprovision.logouts.MAX_FLUSH_FAILURES", 2)
    real = world.ends.add
    down = [True]

    async def refusing(ends: list[SessionEnd], *args: Any, **kwargs: Any) -> None:
        if down[0] or any(end.agent_id == "poison" for end in ends):
            raise StorageError("database write failed on sqlite:///…", detail="value too long")
        await real(ends, *args, **kwargs)

    monkeypatch.setattr(world.ends, "add", refusing)
    poison = SessionEnd(_at(world.now), EndKind.AGENT, "poison")
    first, second = (SessionEnd(_at(world.now), EndKind.AGENT, f"a-{i}") for i in (1, 2))
    for end in (poison, first):
        with pytest.raises(StorageError):
            await world.logouts.remember([end])
    down[0] = False
    await world.store.create(ALICE, world.now - 100)
    await world.logouts.remember([SessionEnd(_at(world.now - 50), EndKind.AGENT, ALICE.agent_id)])

    with pytest.raises(StorageError):
        await world.sweep.sweep_if_due()
    assert await world.store.sessions_of(ALICE.agent_id, world.now) == []  # the sweep ran all the same
    assert world.logouts.unwritten == 1  # the poison; `first` was written after it

    down[0] = True
    with pytest.raises(StorageError):
        await world.logouts.remember([second])
    down[0] = False
    await world.sweep.sweep_if_due()  # the poison fails a second time while `second` is written: dropped

    assert world.logouts.unwritten == 0
    assert {e.agent_id for e in await world.ends.since(_at(0))} == {"a-1", "a-2", ALICE.agent_id}
    assert "dropped 1 logout(s) of agent(s) ['poison']" in caplog.text


async def test_a_row_of_an_unknown_kind_is_skipped_and_the_others_are_replayed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A row written by a newer release (then rolled back) must not stop the sweep of every other row."""
    await world.store.create(ALICE, world.now - 100)
    async with world.database.begin() as conn:
        await conn.execute(
            insert(session_ends).values(ended_at=_at(world.now - 60), kind="tenant", agent_id=ALICE.agent_id)
        )
    await world.logouts.remember([SessionEnd(_at(world.now - 50), EndKind.AGENT, ALICE.agent_id)])

    assert await world.sweep.sweep_if_due() == 1
    assert "unknown kind 'tenant'" in caplog.text


async def test_ends_older_than_the_idle_timeout_are_not_replayed_and_each_agent_is_read_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revived session was last seen no later than the end that deleted it, so it has expired by idle timeout
    once the end is older than that: only the ends of the last idle timeout (+ margin) are replayed, and all the
    ends of one agent cost one read of its sessions."""
    idle = 600.0
    sweep = RevivedSessions(
        AgentRepository(world.database.engine), world.store, AuditLog(world.log), Metrics(),
        session_lifetime_seconds=LIFETIME, idle_timeout_seconds=idle, logouts=world.logouts, clock=lambda: world.now,
    )  # fmt: skip
    past_idle = world.now - idle - LIFETIME_MARGIN_SECONDS - 60
    stale = await world.store.create(ALICE, world.now)  # back in the store, but its end is past any idle timeout
    await world.logouts.remember(
        [SessionEnd(_at(past_idle), EndKind.LOGOUT, ALICE.agent_id, session_key=session_key(stale.id))]
        + [SessionEnd(_at(world.now - i), EndKind.LOGOUT, ALICE.agent_id, session_key=f"{i:064d}") for i in range(5)]
        + [SessionEnd(_at(world.now - 30 - i), EndKind.AGENT, "a-2") for i in range(3)]
    )
    reads: list[str] = []
    deletes: list[str] = []
    read, delete = world.store.sessions_of, world.store.delete_key

    async def counted_read(agent_id: str, now: float) -> list[Any]:
        reads.append(agent_id)
        return await read(agent_id, now)

    async def counted_delete(key: str) -> Any:
        deletes.append(key)
        return await delete(key)

    monkeypatch.setattr(world.store, "sessions_of", counted_read)
    monkeypatch.setattr(world.store, "delete_key", counted_delete)

    assert await sweep.sweep_if_due() == 0

    assert sorted(reads) == ["a-1", "a-2"] and deletes == []
    assert [s.id for s in await world.store.sessions_of(ALICE.agent_id, world.now)] == [session_key(stale.id)]


async def test_an_end_everywhere_is_replayed_at_a_plain_start_and_spares_sign_ins_past_the_clock_margin(
    world: World,
) -> None:
    """A rolling deploy: every replica sweeps at start. Whether Redis lost an agent-wide end cannot be told (a marker
    written after the revocation could reach a Redis restarted without it), so it is replayed: a session signed in
    to within CLOCK_MARGIN_SECONDS after it is ended too (fail closed), one signed in to later is not."""
    ended_at = time.time()
    await world.logouts.remember([SessionEnd(_at(ended_at), EndKind.AGENT, ALICE.agent_id)])
    soon_after = await world.store.create(ALICE, ended_at + 1)
    later = await world.store.create(ALICE, ended_at + CLOCK_MARGIN_SECONDS + 1)

    assert await world.sweep.sweep_if_due() == 1

    kept = await world.store.sessions_of(ALICE.agent_id, ended_at + CLOCK_MARGIN_SECONDS + 2)
    assert [s.id for s in kept] == [session_key(later.id)]
    assert session_key(soon_after.id) not in {s.id for s in kept}


async def test_a_session_whose_login_read_an_end_as_saved_is_never_ended_for_it_though_inside_the_margin(
    world: World,
) -> None:
    """An end is saved after its kill ran, so a login that read it as saved created its session after the kill: the
    end is not replayed against that session (``SessionData.after_ends``), only against the others it covers,
    including one that lists another end, or an end of the same row id at another time (SQLite reuses a pruned
    highest row's id)."""
    ended_at = time.time()
    before = await world.store.create(ALICE, ended_at - 100)
    await world.logouts.remember([SessionEnd(_at(ended_at), EndKind.AGENT, ALICE.agent_id)])
    listed = await world.sweep.ends_before_login(ALICE.agent_id)
    [(row, _)] = [key.split("@") for key in listed]
    read_it = await world.store.create(replace(ALICE, after_ends=listed), ended_at + 1)
    did_not = await world.store.create(ALICE, ended_at + 1)  # e.g. a login racing the kill: ended, fail closed
    other = await world.store.create(replace(ALICE, after_ends=(f"{int(row) + 1}@1",)), ended_at + 1)
    reused = await world.store.create(replace(ALICE, after_ends=(f"{row}@1",)), ended_at + 1)

    assert await world.sweep.sweep_if_due() == 4

    kept = await world.store.sessions_of(ALICE.agent_id, ended_at + 2)
    assert [s.id for s in kept] == [session_key(read_it.id)]
    gone = {session_key(s.id) for s in (before, did_not, other, reused)}
    assert gone.isdisjoint({s.id for s in kept})


async def test_a_login_whose_read_of_the_saved_ends_fails_lists_none_and_goes_on(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read is a convenience (it spares a new session from the sweep), not a condition of signing in: when the
    database does not answer, the login lists nothing, and a sweep may end that session later (fail closed)."""
    await world.logouts.remember([SessionEnd(_at(world.now), EndKind.AGENT, ALICE.agent_id)])

    async def down(*args: Any, **kwargs: Any) -> tuple[str, ...]:
        raise StorageError("database read failed on sqlite:///…", detail="database is locked")

    monkeypatch.setattr(world.ends, "saved_before_login", down)
    assert await world.sweep.ends_before_login(ALICE.agent_id) == ()


async def test_the_check_on_use_applies_an_earlier_stamped_end_saved_after_the_one_the_login_read(
    world: World,
) -> None:
    """Two replicas' clocks differ: the end alice's login read is stamped later than another end saved after her
    login, whose kill did delete her session (and a restarted Redis brought it back). The check on use reads every
    end that may cover the session, not the latest alone, and refuses it."""
    now = time.time()
    alice = replace(ALICE, agent_id=await insert_agent(world.database.engine, _at(now), "alice"))
    await world.logouts.remember([SessionEnd(_at(now + 4), EndKind.AGENT, alice.agent_id)])  # a clock ahead
    listed = await world.sweep.ends_before_login(alice.agent_id)
    session = await world.store.create(replace(alice, after_ends=listed), now + 1)
    await world.logouts.remember([SessionEnd(_at(now + 2), EndKind.AGENT, alice.agent_id)])  # its kill ended it
    assert world.sweep.checking()  # a replica just started: its first sweep has not run

    assert not await world.sweep.believed(session)

    assert await world.store.sessions_of(alice.agent_id, now + 2) == []


@pytest.mark.parametrize("by_sid", [True, False], ids=["of-its-idp-session", "of-every-session"])
async def test_a_sign_in_created_between_a_logouts_revocation_and_its_save_is_ended_after_the_save(
    world: World, monkeypatch: pytest.MonkeyPatch, by_sid: bool
) -> None:
    """A logout — by ``sid``, or of every session of the agent (``sub`` alone, CAEP, the console) — revokes the
    sessions, waits for the replicas, then saves the end. A sign-in whose callback created its session in between,
    and read the saved ends before the save, missed both; the logout ends the sessions once more after the save
    (gateway/deprovision/endings.py). Before, an agent-wide logout left that session alive."""
    endings = SessionEndings(world.store, None, 1.0, world.logouts)
    await world.store.create(ALICE, world.now - 100)  # the session the provider's logout is for
    late: list[Session] = []
    save = world.logouts.remember

    async def sign_in_then_save(ends: Any, *args: Any, **kwargs: Any) -> None:
        late.append(await world.store.create(ALICE, time.time()))  # the callback, between revocation and save
        await save(ends, *args, **kwargs)

    monkeypatch.setattr(world.logouts, "remember", sign_in_then_save)
    ended = await endings.end_sessions(ALICE.agent_id, ALICE.idp_session_id if by_sid else None)

    assert ended is not None and ended.count == 1
    assert late and await world.store.sessions_of(ALICE.agent_id, time.time()) == []


async def test_one_agent_the_store_fails_for_does_not_lose_the_records_of_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = replace(ALICE, agent_id="a-2", user_name="bob", subject="s-2", idp_session_id="B")
    for agent in (ALICE, bob):
        await world.logouts.remember([SessionEnd(_at(world.now), EndKind.AGENT, agent.agent_id)])
        await world.store.create(agent, world.now - 10)  # revived: created before the end
    real = world.store.sessions_of

    async def down_for_bob(agent_id: str, now: float) -> Any:
        if agent_id == bob.agent_id:
            raise StorageError("the session store does not answer for this one")
        return await real(agent_id, now)

    monkeypatch.setattr(world.store, "sessions_of", down_for_bob)

    with pytest.raises(StorageError):
        await world.sweep.sweep_if_due()

    assert await real(ALICE.agent_id, world.now) == []  # ended again, and recorded, though bob's replay failed
    assert [r.agent_id for r in await _recovered(world)] == [ALICE.agent_id]


async def test_a_sign_in_is_reached_by_its_own_sids_ends_and_the_agents_agent_wide_ends_from_their_own_times(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Logouts.ended_for_sign_in``, which the login callback asks after creating its session: an end of the
    sign-in's ``sid`` from ``since``, an end of every session from ``agent_wide_since``, nobody else's ends and no
    other ``sid``'s; saved, or kept in process when the write failed."""
    t = world.now
    bob = "a-2"
    await world.logouts.remember([
        SessionEnd(_at(t), EndKind.IDP_SESSION, ALICE.agent_id, sid="A"),
        SessionEnd(_at(t + 10), EndKind.AGENT, ALICE.agent_id),
        SessionEnd(_at(t + 20), EndKind.AGENT, bob),
        SessionEnd(_at(t + 30), EndKind.IDP_SESSION, bob, sid="A"),
    ])  # fmt: skip

    async def reached(sid: str | None, since: float, agent_wide_since: float) -> EndKind | None:
        return await world.logouts.ended_for_sign_in(
            ALICE.agent_id, sid, since=_at(since), agent_wide_since=_at(agent_wide_since)
        )

    assert await reached("A", t, t + 11) is EndKind.IDP_SESSION  # its sid's end first, whatever else
    assert await reached("A", t + 1, t + 10) is EndKind.AGENT
    assert await reached("B", t, t + 10) is EndKind.AGENT  # another sid: only the agent-wide end
    assert await reached(None, t, t + 10) is EndKind.AGENT  # a provider that sends no sid
    assert await reached("A", t + 1, t + 11) is None  # both before the sign-in; bob's are not alice's

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StorageError("the database does not answer")

    monkeypatch.setattr(world.logouts, "_write", down)
    with pytest.raises(StorageError):
        await world.logouts.remember([SessionEnd(_at(t + 40), EndKind.AGENT, ALICE.agent_id)])
    assert await reached("A", t + 41, t + 40) is EndKind.AGENT  # kept in process, to be written
