"""The session stores' index of IdP sessions: (iss, sid) → the gateway sessions that came from it, which is how a
logout token naming ``sid`` without ``sub`` (OIDC Back-Channel Logout 1.0 §2.4) finds what to end. Every test runs
against the embedded store and a real Redis (``backend``, tests/contracts/conftest.py): the index is written with
the session, loses each session that ends (logout, revocation, expiry found by a lookup), leaves no empty index
behind, and holds at most ``max_sessions_per_idp_session`` sessions (a login beyond ends the oldest: it never just
forgets one, which a logout by ``sid`` would then miss). How it expires in Redis: test_redis_store_replicas.py.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from gateway.sessions.base import Session, SessionState, session_key
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis_store import RedisSessionStore
from tests.components.session_stores import ABSOLUTE, ALICE, BOB, IDLE, T0, Backend, next_of

ISSUER = ALICE.issuer
LAPTOP = replace(ALICE, idp_session_id="sid-laptop")
PHONE = replace(ALICE, idp_session_id="sid-phone")
#: The same sid from the same provider for another subject: odd, but the index is the IdP session's, not an agent's.
BOB_LAPTOP = replace(BOB, idp_session_id="sid-laptop")
OTHER_PROVIDER = replace(BOB, issuer="https://other-idp.example.com", idp_session_id="sid-laptop")


def _keys(*sessions: Session) -> list[str]:
    return [session_key(session.id) for session in sessions]


class TestIdpSessionIndexContract:
    async def test_the_live_sessions_of_an_idp_session_are_found_by_issuer_and_sid_whatever_their_agent(
        self, backend: Backend
    ) -> None:
        laptop = [await backend.store.create(LAPTOP, T0) for _ in range(2)]
        bob = await backend.store.create(BOB_LAPTOP, T0 + 1)
        await backend.store.create(PHONE, T0)
        await backend.store.create(OTHER_PROVIDER, T0)
        await backend.store.create(replace(BOB, idp_session_id=None), T0)

        found = await backend.store.sessions_of_idp_session(ISSUER, "sid-laptop", T0 + 2)
        assert [s.id for s in found] == sorted(_keys(*laptop, bob))  # storage keys, as sessions_of lists them
        assert {s.id: (s.data, s.created_at) for s in found}[session_key(bob.id)] == (BOB_LAPTOP, T0 + 1)
        assert sorted(await backend.idp_index(ISSUER, "sid-laptop") or []) == sorted(_keys(*laptop, bob))
        assert [s.data for s in await backend.store.sessions_of_idp_session(ISSUER, "sid-phone", T0)] == [PHONE]
        assert await backend.store.sessions_of_idp_session(ISSUER, "sid-that-never-was", T0) == []
        assert await backend.store.sessions_of_idp_session(OTHER_PROVIDER.issuer, "sid-phone", T0) == []
        # Idle sessions are not live: only Bob's, a second younger, is left at T0 + IDLE + 0.5.
        later = await backend.store.sessions_of_idp_session(ISSUER, "sid-laptop", T0 + IDLE + 0.5)
        assert [s.id for s in later] == _keys(bob)

    @pytest.mark.parametrize(
        "end", ["logout", "revoke_agent", "revoke_agents", "revoke_idp_session", "idle_lookup", "absolute_lookup"]
    )
    async def test_a_session_that_ends_leaves_its_idp_sessions_index_and_the_last_one_takes_the_index(
        self, backend: Backend, end: str
    ) -> None:
        alice = await backend.store.create(LAPTOP, T0)
        bob = await backend.store.create(BOB_LAPTOP, T0)
        assert await backend.idp_index(ISSUER, "sid-laptop") == _keys(alice, bob)  # oldest first

        if end == "logout":
            assert await backend.store.delete(alice.id) == LAPTOP
        elif end == "revoke_agent":
            assert (await backend.store.revoke_agent(ALICE.agent_id))[0] == 1
        elif end == "revoke_agents":
            assert [count for count, _ in await backend.store.revoke_agents([ALICE.agent_id])] == [1]
        elif end == "revoke_idp_session":
            assert (await backend.store.revoke_idp_session(ALICE.agent_id, "sid-laptop"))[0] == 1
        else:
            now = T0 + IDLE if end == "idle_lookup" else T0 + ABSOLUTE
            assert (await backend.store.lookup(alice.id, now)).state is not SessionState.VALID

        assert await backend.idp_index(ISSUER, "sid-laptop") == _keys(bob)
        assert await backend.store.delete(bob.id) == BOB_LAPTOP
        assert await backend.idp_index(ISSUER, "sid-laptop") is None
        assert await backend.store.sessions_of_idp_session(ISSUER, "sid-laptop", T0 + 1) == []

    async def test_a_group_update_keeps_the_sessions_in_their_idp_sessions_index(self, backend: Backend) -> None:
        alice = await backend.store.create(LAPTOP, T0)
        assert await backend.store.update_agent_groups(ALICE.agent_id, frozenset({"voice"})) == 1
        assert await backend.idp_index(ISSUER, "sid-laptop") == _keys(alice)
        found = await backend.store.sessions_of_idp_session(ISSUER, "sid-laptop", T0 + 1)
        assert [s.data.groups for s in found] == [frozenset({"voice"})]

    async def test_an_idp_session_holds_at_most_the_cap_a_login_beyond_ends_the_oldest_and_broadcasts_its_end(
        self, backend: Backend
    ) -> None:
        store = backend.store
        assert isinstance(store, MemorySessionStore | RedisSessionStore)
        store.max_sessions_per_idp_session = 10
        phone = await store.create(PHONE, T0)
        async with aclosing(store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            laptop = [await store.create(LAPTOP, T0 + n) for n in range(25)]
            ended = [await asyncio.wait_for(pending, timeout=5)]
            ended += [await asyncio.wait_for(next_of(feed), timeout=5) for _ in range(14)]
            _, marker = await store.revoke_agent(BOB.agent_id)
            assert await asyncio.wait_for(next_of(feed), timeout=5) == marker  # the 15 ends, and nothing more

        assert [(r.agent_id, r.ended_session, r.refresh_only) for r in ended] == [
            (ALICE.agent_id, key, True) for key in _keys(*laptop[:15])
        ]
        assert await backend.idp_index(ISSUER, "sid-laptop") == _keys(*laptop[15:])
        for n, session in enumerate(laptop):
            expected = SessionState.MISSING if n < 15 else SessionState.VALID
            assert (await store.lookup(session.id, T0 + 30)).state is expected, n
        assert (await store.lookup(phone.id, T0 + 30)).state is SessionState.VALID  # another IdP session's
        assert len(await store.sessions_of(ALICE.agent_id, T0 + 30)) == 11
        if backend.url is not None:  # what the logins left in Redis, not only what can be found
            async with Redis.from_url(backend.url, decode_responses=True) as raw:
                assert len(await raw.keys("cg:s:*")) == 11
