"""The in-process session cache in front of real Redis, with two replicas: it saves Redis round trips, and every
revocation, logout and group change made on the other replica still applies to the next request, because the
cache drops its copies before the revocation is handed to the listener that acknowledges it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import pytest

from gateway.errors import SessionStoreUnavailable
from gateway.sessions.base import Lookup, Revocation, SessionState
from gateway.sessions.local_cache import CachedSessionStore
from tests.components.redis_server import RedisServer
from tests.components.session_stores import ALICE, BOB, T0, redis_store, wait_for_subscribers

pytestmark = pytest.mark.redis


class Replica:
    """A cached store with its revocation listener running, as gateway/app.py runs it."""

    def __init__(self, store: CachedSessionStore) -> None:
        self.store = store
        self.seen: asyncio.Queue[Revocation] = asyncio.Queue()
        self.task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        async for revocation in self.store.revocations():
            # What the listener can observe at this point: the cache has already dropped the agent.
            await self.seen.put(revocation)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.store.close()


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    a = Replica(CachedSessionStore(redis_store(redis_url, "replica-a"), 2.0))
    b = Replica(CachedSessionStore(redis_store(redis_url, "replica-b"), 2.0))
    await wait_for_subscribers(redis_url, 2)
    while not (a.store.inner.subscribed and b.store.inner.subscribed):
        await asyncio.sleep(0.01)
    yield a, b
    await a.close()
    await b.close()


async def test_repeated_lookups_of_a_valid_session_are_answered_from_memory(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    session = await a.store.create(ALICE, T0)
    for step in range(10):
        assert (await a.store.lookup(session.id, T0 + step * 0.1)).state is SessionState.VALID
    assert (a.store.misses, a.store.hits) == (1, 9)


async def test_an_entry_is_read_again_from_redis_after_the_cache_lifetime(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    session = await a.store.create(ALICE, T0)
    await a.store.lookup(session.id, T0)
    await a.store.lookup(session.id, T0 + 1.9)
    await a.store.lookup(session.id, T0 + 2.0)
    assert (a.store.misses, a.store.hits) == (2, 1)


async def test_a_revocation_on_another_replica_empties_this_cache_before_the_listener_sees_it(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    session = await b.store.create(ALICE, T0)
    assert (await a.store.lookup(session.id, T0)).state is SessionState.VALID
    assert a.store.held(session.id, T0 + 0.05) is not None  # the parser-callback answer's read (no I/O)
    await b.store.revoke_agent(ALICE.agent_id)
    revocation = await asyncio.wait_for(a.seen.get(), 5)
    assert revocation.agent_id == ALICE.agent_id
    assert a.store.held(session.id, T0 + 0.1) is None
    assert (await a.store.lookup(session.id, T0 + 0.1)).state is SessionState.MISSING


async def test_the_revoking_replica_refuses_at_once(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    session = await a.store.create(ALICE, T0)
    await a.store.lookup(session.id, T0)
    await a.store.revoke_agent(ALICE.agent_id)
    assert (await a.store.lookup(session.id, T0 + 0.1)).state is SessionState.MISSING


async def test_a_logout_on_another_replica_ends_the_cached_session(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    session = await a.store.create(BOB, T0)
    await a.store.lookup(session.id, T0)
    await b.store.delete(session.id)
    refresh = await asyncio.wait_for(a.seen.get(), 5)
    assert refresh.refresh_only and refresh.agent_id == BOB.agent_id
    assert (await a.store.lookup(session.id, T0 + 0.1)).state is SessionState.MISSING


async def test_a_group_change_on_another_replica_reaches_the_next_lookup(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    session = await a.store.create(ALICE, T0)
    await a.store.lookup(session.id, T0)
    await b.store.update_agent_groups(ALICE.agent_id, frozenset({"mail-agents"}))
    await asyncio.wait_for(a.seen.get(), 5)
    found = await a.store.lookup(session.id, T0 + 0.1)
    assert found.session is not None and found.session.data.groups == {"mail-agents"}


async def test_a_cached_session_is_not_served_past_its_absolute_timeout(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    store = a.store
    session = await store.create(ALICE, T0)
    now = T0
    while now < T0 + store.absolute_timeout - 1:  # kept alive by use, so only the absolute limit can end it
        now = min(now + store.idle_timeout / 2, T0 + store.absolute_timeout - 1)
        assert (await store.lookup(session.id, now)).state is SessionState.VALID
    # Read from Redis one second before the end: still fresh in the cache half a second after the end.
    assert (await store.lookup(session.id, T0 + store.absolute_timeout + 0.5)).state is SessionState.ABSOLUTE_EXPIRED


async def test_without_a_confirmed_subscription_nothing_is_served_from_memory(redis_url: str) -> None:
    """No listener running (or the broadcast lost): every lookup goes to Redis, so no revocation can be missed."""
    store = CachedSessionStore(redis_store(redis_url, "replica-c"), 2.0)
    try:
        session = await store.create(ALICE, T0)
        for step in range(3):
            await store.lookup(session.id, T0 + step)
            assert store.held(session.id, T0 + step) is None
        assert store.hits == 0
    finally:
        await store.close()


async def test_when_redis_goes_away_the_cache_stops_answering_and_the_store_fails_closed() -> None:
    with RedisServer() as server:
        replica = Replica(CachedSessionStore(redis_store(server.url, "replica-d"), 5.0))
        try:
            while not replica.store.inner.subscribed:
                await asyncio.sleep(0.01)
            session = await replica.store.create(ALICE, T0)
            await replica.store.lookup(session.id, T0)
            server.stop()
            deadline = asyncio.get_running_loop().time() + 10
            while replica.store.inner.subscribed:
                assert asyncio.get_running_loop().time() < deadline, "the lost subscription was never noticed"
                await asyncio.sleep(0.05)
            assert replica.store.held(session.id, T0 + 0.5) is None
            with pytest.raises(SessionStoreUnavailable):
                await replica.store.lookup(session.id, T0 + 0.5)
        finally:
            await replica.close()


class ReadInFlight:
    """Holds replica ``store``'s Redis lookups after their reply came in, until released: the reply and a
    broadcast arrive on two sockets, and which the event loop hands on first is up to it."""

    def __init__(self, store: CachedSessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = asyncio.Event()
        run = store.inner._lookups.run

        async def held(keys: Sequence[str], args: Sequence[Any]) -> Any:
            reply = await run(keys, args)
            await self.release.wait()
            return reply

        monkeypatch.setattr(store.inner._lookups, "run", held)
        self._undo = monkeypatch

    async def resume(self, lookup: asyncio.Task[Lookup]) -> Lookup:
        self.release.set()
        found = await lookup
        self._undo.undo()
        return found


async def test_a_lookup_in_flight_across_a_revocation_is_not_kept_once_the_revocation_is_acknowledged(
    replicas: tuple[Replica, Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    await a.store.heartbeat()
    session = await b.store.create(ALICE, T0)
    held = ReadInFlight(a.store, monkeypatch)
    racing = asyncio.create_task(a.store.lookup(session.id, T0))
    await asyncio.sleep(0.1)
    _, revocation = await b.store.revoke_agent(ALICE.agent_id)
    await asyncio.wait_for(a.seen.get(), 5)
    await a.store.acknowledge(revocation)  # what gateway/app.py's listener does once the cache dropped the agent
    assert await b.store.wait_for_acks(revocation, 5) == ({"replica-a"}, set())
    await held.resume(racing)  # the request that raced the revocation: it started before, it may pass
    assert (await a.store.lookup(session.id, T0 + 0.5)).state is SessionState.MISSING


async def test_a_lookup_in_flight_across_a_logout_on_the_same_replica_is_not_kept(
    replicas: tuple[Replica, Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = replicas
    session = await a.store.create(ALICE, T0)
    held = ReadInFlight(a.store, monkeypatch)
    racing = asyncio.create_task(a.store.lookup(session.id, T0))  # a parallel request of the same browser
    await asyncio.sleep(0.1)
    assert await a.store.delete(session.id) == ALICE
    assert (await asyncio.wait_for(a.seen.get(), 5)).ended_session is not None
    await held.resume(racing)
    assert (await a.store.lookup(session.id, T0 + 0.5)).state is SessionState.MISSING


async def test_a_lookup_in_flight_across_a_group_change_does_not_keep_the_old_groups(
    replicas: tuple[Replica, Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    session = await b.store.create(ALICE, T0)
    held = ReadInFlight(a.store, monkeypatch)
    racing = asyncio.create_task(a.store.lookup(session.id, T0))
    await asyncio.sleep(0.1)
    await b.store.update_agent_groups(ALICE.agent_id, frozenset({"mail-agents"}))
    await asyncio.wait_for(a.seen.get(), 5)
    await held.resume(racing)
    found = await a.store.lookup(session.id, T0 + 0.5)
    assert found.session is not None and found.session.data.groups == {"mail-agents"}


async def test_a_feed_opened_to_resync_empties_the_cache(replicas: tuple[Replica, Replica], redis_url: str) -> None:
    """A listener started again after it failed missed broadcasts: nothing cached before may be served."""
    a, _ = replicas
    session = await a.store.create(ALICE, T0)
    await a.store.lookup(session.id, T0)
    async with aclosing(a.store.revocations(resync=True)) as feed:
        assert (await asyncio.wait_for(anext(feed), 5)).is_resync
    await a.store.lookup(session.id, T0 + 0.1)
    assert (a.store.misses, a.store.hits) == (2, 0)
