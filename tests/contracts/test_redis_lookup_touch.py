"""A Redis session lookup writes at most once a second per session (``LOOKUP_TOUCH_SECONDS``): the lookups in
between read only, so a busy session's requests cost Redis — and its replicas and AOF — no writes; its idle clock
then runs from the last write, so a session may idle out up to that much early and never late.

To see whether a lookup wrote, a test shortens the keys' TTLs by hand after a touch: a lookup that refreshed them
puts them back above the mark, one that only read leaves them below it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.sessions.base import Session, SessionState, session_key
from gateway.sessions.redis_scripts import AGENT_PREFIX, SESSION_PREFIX, idp_session_index
from gateway.sessions.redis_store import LOOKUP_TOUCH_SECONDS, RedisSessionStore
from tests.components.session_stores import ALICE, IDLE, T0, redis_store

#: What a test sets the keys' TTLs to, far below what a touch gives them (idle + grace, absolute + grace).
SHORTENED_MS = 100_000

pytestmark = pytest.mark.redis


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisSessionStore]:
    replica = redis_store(redis_url, "replica-a")
    yield replica
    await replica.close()


def _keys(session: Session) -> list[str]:
    """The session's hash, its agent's index and its IdP session's index."""
    assert ALICE.idp_session_id is not None
    return [
        SESSION_PREFIX + session_key(session.id),
        AGENT_PREFIX + ALICE.agent_id,
        idp_session_index(ALICE.issuer, ALICE.idp_session_id),
    ]


async def _shorten(raw: Redis, keys: list[str]) -> None:
    for key in keys:
        assert await raw.pexpire(key, SHORTENED_MS)


async def _ttls(raw: Redis, keys: list[str]) -> list[int]:
    return [int(await raw.pttl(key)) for key in keys]


async def test_lookups_within_the_touch_interval_of_the_last_write_leave_every_key_as_it_was(
    store: RedisSessionStore, raw: Redis
) -> None:
    session = await store.create(ALICE, T0)
    keys = _keys(session)
    touched = await store.lookup(session.id, T0 + 5)
    assert touched.session is not None and touched.session.last_seen_at == T0 + 5
    await _shorten(raw, keys)
    for later in (0.001, LOOKUP_TOUCH_SECONDS / 2, LOOKUP_TOUCH_SECONDS - 0.001):
        found = await store.lookup(session.id, T0 + 5 + later)
        assert found.state is SessionState.VALID
        assert found.session is not None and found.session.last_seen_at == T0 + 5  # as stored: nothing written
    assert all(0 < ttl <= SHORTENED_MS for ttl in await _ttls(raw, keys))
    assert float(await raw.hget(keys[0], "seen") or 0) == T0 + 5


async def test_a_lookup_a_touch_interval_after_the_last_write_moves_seen_and_restores_every_ttl(
    store: RedisSessionStore, raw: Redis
) -> None:
    session = await store.create(ALICE, T0)
    keys = _keys(session)
    await _shorten(raw, keys)
    found = await store.lookup(session.id, T0 + LOOKUP_TOUCH_SECONDS)
    assert found.session is not None and found.session.last_seen_at == T0 + LOOKUP_TOUCH_SECONDS
    assert all(ttl > SHORTENED_MS for ttl in await _ttls(raw, keys))


async def test_a_session_idles_out_from_its_last_write_not_later_than_idle_after_its_last_request(
    store: RedisSessionStore,
) -> None:
    session = await store.create(ALICE, T0)
    assert (await store.lookup(session.id, T0 + 10)).state is SessionState.VALID  # written
    assert (await store.lookup(session.id, T0 + 10.9)).state is SessionState.VALID  # read only
    # Idle is counted from the write at T0 + 10: 0.9 s early for the request at T0 + 10.9, never late.
    assert (await store.lookup(session.id, T0 + 10 + IDLE)).state is SessionState.IDLE_EXPIRED


async def test_a_clock_more_than_the_touch_interval_behind_seen_still_refreshes_the_ttls(
    store: RedisSessionStore, raw: Redis
) -> None:
    """A replica whose clock runs behind the one that wrote ``seen`` (or a clock stepped back) does not move
    ``seen`` back, and still keeps the keys alive, as before the touch interval existed."""
    session = await store.create(ALICE, T0)
    keys = _keys(session)
    await store.lookup(session.id, T0 + 30)
    await _shorten(raw, keys)
    found = await store.lookup(session.id, T0 + 30 - 2 * LOOKUP_TOUCH_SECONDS)
    assert found.session is not None and found.session.last_seen_at == T0 + 30
    assert all(ttl > SHORTENED_MS for ttl in await _ttls(raw, keys))
