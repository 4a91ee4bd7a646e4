"""The session-store contract: every test in ``TestSessionStoreContract`` runs against the embedded store and a
real Redis server. What only Redis does has modules of its own: two stores on one server
(test_redis_store_replicas.py), a killed server (test_redis_store_outage.py), the acknowledgements of revocation
broadcasts (test_revocation_acks.py).

Time is frozen: each call passes its own ``now``, so idle and absolute expiry are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import Coroutine
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.errors import BadRequest, StorageError
from gateway.sessions.base import (
    RESYNC_AGENT_ID,
    SessionState,
    UseState,
    session_key,
)
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis_store import RedisSessionStore
from gateway.sessions.single_use import TokenInProgress, run_once
from tests.components.session_stores import (
    ABSOLUTE,
    ALICE,
    BOB,
    IDLE,
    ODD_GROUP_IDS,
    ODD_GROUPS,
    PENDING,
    T0,
    Backend,
    next_of,
)


class TestSessionStoreContract:
    async def test_session_ids_are_unique_and_carry_at_least_128_bits_over_10k_sessions(self, backend: Backend) -> None:
        ids = [(await backend.store.create(BOB, T0)).id for _ in range(10_000)]
        assert len(set(ids)) == len(ids)
        assert all(len(base64.urlsafe_b64decode(i + "=" * (-len(i) % 4))) * 8 >= 128 for i in ids)

    async def test_the_store_keeps_the_sha256_of_the_id_never_the_id(self, backend: Backend) -> None:
        session = await backend.store.create(ALICE, T0)
        stored = await backend.stored_text()
        assert session_key(session.id) in stored
        assert session.id not in stored

    async def test_a_new_session_is_found_with_all_its_data(self, backend: Backend) -> None:
        session = await backend.store.create(ALICE, T0)
        found = await backend.store.lookup(session.id, T0 + 1)
        assert found.state is SessionState.VALID
        assert found.session is not None
        assert found.session.id == session.id
        assert found.session.data == ALICE
        assert (found.session.created_at, found.session.last_seen_at) == (T0, T0 + 1)

    async def test_an_unknown_id_is_missing(self, backend: Backend) -> None:
        found = await backend.store.lookup("not-a-session", T0)
        assert (found.state, found.session, found.data) == (SessionState.MISSING, None, None)

    async def test_lookup_refreshes_the_idle_clock(self, backend: Backend) -> None:
        session = await backend.store.create(ALICE, T0)
        for step in range(1, 5):
            found = await backend.store.lookup(session.id, T0 + step * (IDLE - 1))
            assert found.state is SessionState.VALID, step
        assert (await backend.store.lookup(session.id, T0 + 4 * (IDLE - 1) + IDLE)).state is SessionState.IDLE_EXPIRED

    async def test_an_idle_session_is_reported_idle_expired_with_its_data_and_deleted(self, backend: Backend) -> None:
        session = await backend.store.create(ALICE, T0)
        assert (await backend.store.lookup(session.id, T0 + IDLE - 0.5)).state is SessionState.VALID
        found = await backend.store.lookup(session.id, T0 + 2 * IDLE)
        assert (found.state, found.session, found.data) == (SessionState.IDLE_EXPIRED, None, ALICE)
        assert (await backend.store.lookup(session.id, T0 + 2 * IDLE)).state is SessionState.MISSING
        assert await backend.store.sessions_of(ALICE.agent_id, T0 + 2 * IDLE) == []

    async def test_a_busy_session_still_ends_at_its_absolute_lifetime(self, backend: Backend) -> None:
        session = await backend.store.create(ALICE, T0)
        now = T0
        while now + IDLE / 2 < T0 + ABSOLUTE:
            now += IDLE / 2
            assert (await backend.store.lookup(session.id, now)).state is SessionState.VALID
        found = await backend.store.lookup(session.id, T0 + ABSOLUTE)
        assert (found.state, found.data) == (SessionState.ABSOLUTE_EXPIRED, ALICE)
        assert (await backend.store.lookup(session.id, T0 + ABSOLUTE)).state is SessionState.MISSING

    async def test_held_answers_a_valid_session_as_lookup_would_or_not_at_all(self, backend: Backend) -> None:
        """``held`` (the forward-auth listener's answer without I/O): the embedded store holds every session, Redis
        alone none; never one that lookup() would refuse, and a held answer refreshes the idle clock as lookup()."""
        session = await backend.store.create(ALICE, T0)
        held = backend.store.held(session.id, T0 + IDLE - 1)
        if held is not None:
            assert (held.id, held.data, held.created_at, held.last_seen_at) == (session.id, ALICE, T0, T0 + IDLE - 1)
            assert (await backend.store.lookup(session.id, T0 + 2 * IDLE - 2)).state is SessionState.VALID
        assert backend.store.held(session.id, T0 + ABSOLUTE + 1) is None
        assert backend.store.held("no-such-session", T0 + 1) is None
        await backend.store.revoke_agent(ALICE.agent_id)
        assert backend.store.held(session.id, T0 + 2) is None

    async def test_delete_returns_the_data_once_and_ends_the_session(self, backend: Backend) -> None:
        session = await backend.store.create(ALICE, T0)
        assert await backend.store.delete(session.id) == ALICE
        assert await backend.store.delete(session.id) is None
        assert (await backend.store.lookup(session.id, T0)).state is SessionState.MISSING
        assert await backend.store.sessions_of(ALICE.agent_id, T0) == []

    async def test_delete_key_ends_the_session_stored_under_that_key_and_broadcasts_its_end_once(
        self, backend: Backend
    ) -> None:
        """How the sweep after an outage ends a remembered logout again: by the key, never the id (which is not
        kept anywhere)."""
        session = await backend.store.create(ALICE, T0)
        other = await backend.store.create(ALICE, T0)
        async with aclosing(backend.store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            assert await backend.store.delete_key(session_key(session.id)) == ALICE
            assert await backend.store.delete_key(session_key(session.id)) is None
            assert (await asyncio.wait_for(pending, timeout=5)).ended_session == session_key(session.id)
        assert (await backend.store.lookup(session.id, T0)).state is SessionState.MISSING
        assert [s.id for s in await backend.store.sessions_of(ALICE.agent_id, T0)] == [session_key(other.id)]

    async def test_a_logout_broadcasts_the_end_of_that_session_once_as_an_unacknowledged_refresh(
        self, backend: Backend
    ) -> None:
        """Every replica closes the session's WebSockets and streams (ASVS 7.4.1); the agent's others stay."""
        session = await backend.store.create(ALICE, T0)
        await backend.store.create(ALICE, T0)
        async with aclosing(backend.store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            assert await backend.store.delete(session.id) == ALICE
            assert await backend.store.delete(session.id) is None
            _, marker = await backend.store.revoke_agent(BOB.agent_id)
            ended = await asyncio.wait_for(pending, timeout=5)
            assert (ended.agent_id, ended.ended_session, ended.origin_replica) == (
                ALICE.agent_id,
                session_key(session.id),
                "replica-a",
            )
            assert ended.refresh_only and not ended.is_resync
            assert await asyncio.wait_for(next_of(feed), timeout=5) == marker  # the second delete sent nothing

    @pytest.mark.parametrize("late", ["idle", "absolute"])
    async def test_the_lookup_that_finds_a_session_expired_broadcasts_its_end_once(
        self, backend: Backend, late: str
    ) -> None:
        session = await backend.store.create(ALICE, T0)
        now = T0 + 1 + IDLE if late == "idle" else T0 + ABSOLUTE
        async with aclosing(backend.store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            assert (await backend.store.lookup(session.id, T0 + 1)).state is SessionState.VALID
            assert (await backend.store.lookup(session.id, now)).state is not SessionState.VALID
            assert (await backend.store.lookup(session.id, now)).state is SessionState.MISSING
            _, marker = await backend.store.revoke_agent(BOB.agent_id)
            ended = await asyncio.wait_for(pending, timeout=5)
            assert (ended.agent_id, ended.ended_session) == (ALICE.agent_id, session_key(session.id))
            assert await asyncio.wait_for(next_of(feed), timeout=5) == marker

    async def test_an_agents_revocation_names_no_session(self, backend: Backend) -> None:
        await backend.store.create(ALICE, T0)
        async with aclosing(backend.store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            _, revocation = await backend.store.revoke_agent(ALICE.agent_id)
            received = await asyncio.wait_for(pending, timeout=5)
        assert received == revocation and received.ended_session is None and not received.refresh_only

    async def test_sessions_of_lists_live_sessions_by_storage_key_only(self, backend: Backend) -> None:
        first = await backend.store.create(ALICE, T0)
        second = await backend.store.create(ALICE, T0 + IDLE / 2)
        await backend.store.create(BOB, T0)
        listed = await backend.store.sessions_of(ALICE.agent_id, T0 + IDLE / 2)
        assert {s.id for s in listed} == {session_key(first.id), session_key(second.id)}
        assert all(s.data == ALICE for s in listed)
        later = await backend.store.sessions_of(ALICE.agent_id, T0 + IDLE)
        assert [s.id for s in later] == [session_key(second.id)]

    async def test_revoke_agent_removes_every_session_of_that_agent_and_no_other(self, backend: Backend) -> None:
        alice = [await backend.store.create(ALICE, T0) for _ in range(3)]
        bob = await backend.store.create(BOB, T0)
        count, revocation = await backend.store.revoke_agent(ALICE.agent_id)
        assert count == 3
        assert (revocation.agent_id, revocation.origin_replica) == (ALICE.agent_id, "replica-a")
        assert not revocation.is_resync
        for session in alice:
            assert (await backend.store.lookup(session.id, T0 + 1)).state is SessionState.MISSING
        assert (await backend.store.lookup(bob.id, T0 + 1)).state is SessionState.VALID
        assert await backend.store.sessions_of(ALICE.agent_id, T0 + 1) == []
        assert (await backend.store.revoke_agent(ALICE.agent_id))[0] == 0

    async def test_revoke_agents_ends_each_agents_sessions_in_one_call_and_broadcasts_each_revocation(
        self, backend: Backend
    ) -> None:
        alice = [await backend.store.create(ALICE, T0) for _ in range(2)]
        bob = await backend.store.create(BOB, T0)
        carol = await backend.store.create(replace(BOB, agent_id="agent-carol", user_name="carol"), T0)
        async with aclosing(backend.store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            results = await backend.store.revoke_agents([BOB.agent_id, "agent-nobody", ALICE.agent_id])
            assert [(count, r.agent_id) for count, r in results] == [
                (1, BOB.agent_id),
                (0, "agent-nobody"),
                (2, ALICE.agent_id),
            ]
            assert await asyncio.wait_for(pending, timeout=5) == results[0][1]
            assert [await asyncio.wait_for(next_of(feed), timeout=5) for _ in range(2)] == [r for _, r in results[1:]]
        for session in [*alice, bob]:
            assert (await backend.store.lookup(session.id, T0 + 1)).state is SessionState.MISSING
        assert (await backend.store.lookup(carol.id, T0 + 1)).state is SessionState.VALID
        with pytest.raises(ValueError, match="resync"):
            await backend.store.revoke_agents([ALICE.agent_id, RESYNC_AGENT_ID])

    async def test_revoke_agent_if_any_broadcasts_only_when_a_session_ended(self, backend: Backend) -> None:
        alice = await backend.store.create(ALICE, T0)
        async with aclosing(backend.store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            assert await backend.store.revoke_agent_if_any(BOB.agent_id) == (0, None)
            count, revocation = await backend.store.revoke_agent_if_any(ALICE.agent_id)
            assert count == 1 and revocation is not None and revocation.agent_id == ALICE.agent_id
            assert await asyncio.wait_for(pending, timeout=5) == revocation  # the first broadcast is Alice's
        assert (await backend.store.lookup(alice.id, T0 + 1)).state is SessionState.MISSING
        assert await backend.store.revoke_agent_if_any(ALICE.agent_id) == (0, None)

    async def test_a_back_channel_logout_ends_only_the_sessions_of_that_idp_session(self, backend: Backend) -> None:
        """OIDC Back-Channel Logout 1.0 §2.4: ``sid`` names one IdP session; the agent's others stay."""
        laptop = [await backend.store.create(replace(ALICE, idp_session_id="sid-laptop"), T0) for _ in range(2)]
        phone = await backend.store.create(replace(ALICE, idp_session_id="sid-phone"), T0)
        other = await backend.store.create(replace(BOB, idp_session_id="sid-laptop"), T0)  # same sid, other agent
        async with aclosing(backend.store.revocations()) as feed:
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            count, revocation = await backend.store.revoke_idp_session(ALICE.agent_id, "sid-laptop")
            assert count == 2 and revocation is not None
            assert await asyncio.wait_for(pending, timeout=5) == revocation
        for session in laptop:
            assert (await backend.store.lookup(session.id, T0 + 1)).state is SessionState.MISSING
        assert (await backend.store.lookup(phone.id, T0 + 1)).state is SessionState.VALID
        assert (await backend.store.lookup(other.id, T0 + 1)).state is SessionState.VALID
        assert [s.data.idp_session_id for s in await backend.store.sessions_of(ALICE.agent_id, T0 + 1)] == ["sid-phone"]
        assert await backend.store.revoke_idp_session(ALICE.agent_id, "sid-laptop") == (0, None)
        assert await backend.store.revoke_idp_session("agent-nobody", "sid-phone") == (0, None)

    async def test_a_single_use_key_is_in_progress_while_claimed_and_used_once_confirmed_until_it_expires(
        self, backend: Backend
    ) -> None:
        claim = await backend.store.claim_use("jti-1", hold_seconds=60)
        assert claim.state is UseState.CLAIMED
        assert (await backend.store.claim_use("jti-1", hold_seconds=60)).state is UseState.IN_PROGRESS
        await backend.store.confirm_use(claim, ttl_seconds=1)
        assert (await backend.store.claim_use("jti-1", hold_seconds=60)).state is UseState.USED
        assert (await backend.store.claim_use("jti-2", hold_seconds=60)).state is UseState.CLAIMED
        await asyncio.sleep(1.2)
        assert (await backend.store.claim_use("jti-1", hold_seconds=60)).state is UseState.CLAIMED

    async def test_a_released_single_use_key_can_be_claimed_again_but_a_late_release_frees_no_other_claim(
        self, backend: Backend
    ) -> None:
        first = await backend.store.claim_use("jti-1", hold_seconds=1)
        await backend.store.release_use(first)
        second = await backend.store.claim_use("jti-1", hold_seconds=1)
        assert second.state is UseState.CLAIMED
        await asyncio.sleep(1.2)  # the hold lapses by itself (its holder died mid-action)
        third = await backend.store.claim_use("jti-1", hold_seconds=60)
        assert third.state is UseState.CLAIMED
        await backend.store.release_use(second)  # too late: the key is the third claim's now
        assert (await backend.store.claim_use("jti-1", hold_seconds=60)).state is UseState.IN_PROGRESS

    async def test_concurrent_claims_of_one_single_use_key_give_it_to_exactly_one(self, backend: Backend) -> None:
        claims = await asyncio.gather(*(backend.store.claim_use("jti-1", hold_seconds=60) for _ in range(20)))
        assert sorted(claim.state.value for claim in claims) == ["claimed"] + ["in_progress"] * 19

    async def test_a_token_run_once_acts_once_for_concurrent_duplicates_and_again_after_its_action_failed(
        self, backend: Backend
    ) -> None:
        acted: list[str] = []
        outage_over = asyncio.Event()

        async def act(name: str, *, fail: bool) -> str:
            acted.append(name)
            if fail:
                await outage_over.wait()
                raise StorageError("the database does not answer")
            return name

        def once(name: str, *, fail: bool = False) -> Coroutine[Any, Any, str]:
            replayed = BadRequest("already used")
            return run_once(backend.store, "jti-1", lambda: act(name, fail=fail), ttl_seconds=60, replayed=replayed)

        first = asyncio.create_task(once("first", fail=True))
        while not acted:
            await asyncio.sleep(0.01)
        with pytest.raises(TokenInProgress):
            await once("duplicate")  # while the first runs: not acted on, and told to come back
        outage_over.set()
        with pytest.raises(StorageError):
            await first
        assert await once("retry") == "retry"  # nothing took effect, so the sender's retry is served
        with pytest.raises(BadRequest, match="already used"):
            await once("replay")
        assert acted == ["first", "retry"]

    @pytest.mark.parametrize("groups", ODD_GROUPS, ids=ODD_GROUP_IDS)
    async def test_a_group_update_replaces_the_groups_of_every_session_of_that_agent_and_no_other(
        self, backend: Backend, groups: frozenset[str]
    ) -> None:
        alice = [await backend.store.create(ALICE, T0 + i) for i in range(3)]
        bob = await backend.store.create(BOB, T0)
        assert await backend.store.update_agent_groups(ALICE.agent_id, groups) == 3
        for i, session in enumerate(alice):
            found = await backend.store.lookup(session.id, T0 + 10)
            assert found.session is not None
            assert found.session.data == dataclasses.replace(ALICE, groups=groups)
            assert (found.session.created_at, found.session.last_seen_at) == (T0 + i, T0 + 10)
        found = await backend.store.lookup(bob.id, T0 + 10)
        assert found.session is not None and found.session.data == BOB
        assert {s.data.groups for s in await backend.store.sessions_of(ALICE.agent_id, T0 + 10)} == {groups}

    async def test_the_ends_a_login_read_as_saved_are_kept_as_written_through_lookups_and_group_updates(
        self, backend: Backend
    ) -> None:
        """``SessionData.after_ends`` decides which saved ends the sweep after an outage may not replay against the
        session (gateway/deprovision/revived.py): it must come back exactly, also after Redis's in-place splice of
        the groups."""
        listed = replace(ALICE, after_ends=("7@1733460000000000", "12@1733460001000000"))
        session = await backend.store.create(listed, T0)
        assert await backend.store.update_agent_groups(ALICE.agent_id, frozenset({"voice", "]"})) == 1
        found = await backend.store.lookup(session.id, T0 + 1)
        assert found.session is not None
        assert found.session.data == replace(listed, groups=frozenset({"voice", "]"}))
        [again] = await backend.store.sessions_of(ALICE.agent_id, T0 + 1)
        assert again.data.after_ends == listed.after_ends

    async def test_each_group_update_replaces_the_last_one(self, backend: Backend) -> None:
        session = await backend.store.create(ALICE, T0)
        for step, groups in enumerate([*ODD_GROUPS, ALICE.groups], start=1):
            assert await backend.store.update_agent_groups(ALICE.agent_id, groups) == 1
            found = await backend.store.lookup(session.id, T0 + step)
            assert found.session is not None and found.session.data.groups == groups, step

    async def test_a_group_update_for_an_agent_without_sessions_updates_nothing(self, backend: Backend) -> None:
        await backend.store.create(BOB, T0)
        assert await backend.store.update_agent_groups(ALICE.agent_id, frozenset({"voice"})) == 0
        assert await backend.store.sessions_of(ALICE.agent_id, T0) == []

    async def test_a_group_update_does_not_bring_back_a_revoked_deleted_or_expired_session(
        self, backend: Backend
    ) -> None:
        revoked = await backend.store.create(ALICE, T0)
        await backend.store.revoke_agent(ALICE.agent_id)
        deleted = await backend.store.create(ALICE, T0)
        await backend.store.delete(deleted.id)
        expired = await backend.store.create(ALICE, T0)
        assert (await backend.store.lookup(expired.id, T0 + IDLE)).state is SessionState.IDLE_EXPIRED
        assert await backend.store.update_agent_groups(ALICE.agent_id, frozenset({"voice"})) == 0
        for session in (revoked, deleted, expired):
            assert (await backend.store.lookup(session.id, T0 + 1)).state is SessionState.MISSING
        assert await backend.store.sessions_of(ALICE.agent_id, T0 + 1) == []

    async def test_a_group_update_does_not_refresh_the_idle_or_absolute_clock(self, backend: Backend) -> None:
        idle = await backend.store.create(ALICE, T0)
        busy = await backend.store.create(ALICE, T0)
        now = T0
        while now + IDLE / 2 < T0 + ABSOLUTE:
            now += IDLE / 2
            assert (await backend.store.lookup(busy.id, now)).state is SessionState.VALID
        voice = frozenset({"voice"})
        await backend.store.update_agent_groups(ALICE.agent_id, voice)
        found = await backend.store.lookup(idle.id, T0 + IDLE)
        assert (found.state, found.data) == (SessionState.IDLE_EXPIRED, dataclasses.replace(ALICE, groups=voice))
        assert (await backend.store.lookup(busy.id, T0 + ABSOLUTE)).state is SessionState.ABSOLUTE_EXPIRED

    async def test_lookups_racing_a_group_update_see_the_old_groups_or_the_new_never_a_mix(
        self, backend: Backend
    ) -> None:
        sessions = [await backend.store.create(ALICE, T0) for _ in range(20)]
        new = frozenset({"voice", "supervisors"})

        async def groups_seen(session_id: str) -> frozenset[str]:
            found = await backend.store.lookup(session_id, T0 + 1)
            assert found.session is not None
            return found.session.data.groups

        racing = [asyncio.create_task(groups_seen(session.id)) for session in sessions]
        update = asyncio.create_task(backend.store.update_agent_groups(ALICE.agent_id, new))
        seen = await asyncio.gather(*racing)
        assert await update == 20
        assert set(seen) <= {ALICE.groups, new}
        assert {await groups_seen(session.id) for session in sessions} == {new}

    async def test_the_resync_marker_cannot_be_revoked_as_an_agent(self, backend: Backend) -> None:
        with pytest.raises(ValueError, match="resync"):
            await backend.store.revoke_agent(RESYNC_AGENT_ID)

    async def test_closing_the_store_ends_its_revocations_iterators(self, backend: Backend) -> None:
        async with aclosing(backend.store.revocations()) as feed:
            waiting = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            await backend.store.close()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(waiting, timeout=3)

    async def test_a_feed_opened_to_resync_starts_with_the_resync_marker_then_follows_the_broadcast(
        self, backend: Backend
    ) -> None:
        """What a listener started again after it failed asks for: broadcasts were missed meanwhile."""
        async with aclosing(backend.store.revocations(resync=True)) as feed:
            marker = await asyncio.wait_for(next_of(feed), timeout=5)
            assert marker.is_resync and marker.origin_replica == "replica-a"
            pending = asyncio.create_task(next_of(feed))
            await backend.wait_subscribed(1)
            _, revocation = await backend.store.revoke_agent(ALICE.agent_id)
            assert await asyncio.wait_for(pending, timeout=5) == revocation

    async def test_each_revocation_has_its_own_id(self, backend: Backend) -> None:
        _, first = await backend.store.revoke_agent(ALICE.agent_id)
        _, second = await backend.store.revoke_agent(ALICE.agent_id)
        assert first.revocation_id != second.revocation_id

    async def test_every_revocations_iterator_receives_the_broadcast(self, backend: Backend) -> None:
        async with aclosing(backend.store.revocations()) as one, aclosing(backend.store.revocations()) as two:
            pending = [asyncio.create_task(next_of(one)), asyncio.create_task(next_of(two))]
            await backend.wait_subscribed(2)
            _, revocation = await backend.store.revoke_agent(ALICE.agent_id)
            received = await asyncio.wait_for(asyncio.gather(*pending), timeout=5)
        assert received == [revocation, revocation]

    async def test_this_replica_acknowledging_satisfies_wait_for_acks(self, backend: Backend) -> None:
        await backend.store.heartbeat()
        _, revocation = await backend.store.revoke_agent(ALICE.agent_id)
        await backend.store.acknowledge(revocation)
        started = time.monotonic()
        acked, missing = await backend.store.wait_for_acks(revocation, timeout=5)
        assert (acked, missing) == ({"replica-a"}, set())
        assert time.monotonic() - started < 1

    async def test_a_pending_login_can_be_taken_only_once(self, backend: Backend) -> None:
        await backend.store.put_pending_login("login-1", PENDING, ttl_seconds=60)
        assert await backend.store.take_pending_login("login-1") == PENDING
        assert await backend.store.take_pending_login("login-1") is None
        assert "login-1" not in await backend.stored_text()

    async def test_a_pending_login_expires(self, backend: Backend) -> None:
        await backend.store.put_pending_login("login-2", PENDING, ttl_seconds=1)
        await asyncio.sleep(1.2)
        assert await backend.store.take_pending_login("login-2") is None

    async def test_a_flood_of_unfinished_logins_keeps_at_most_the_cap_dropping_the_oldest(
        self, backend: Backend
    ) -> None:
        store = backend.store
        assert isinstance(store, MemorySessionStore | RedisSessionStore)
        store.max_pending_logins = 10
        for n in range(25):
            await store.put_pending_login(f"flood-{n}", PENDING, ttl_seconds=60)
        if backend.url is not None:  # what the flood left in Redis, not only what can be taken
            async with Redis.from_url(backend.url, decode_responses=True) as raw:
                assert len(await raw.keys("cg:l:*")) == 10
        assert await store.take_pending_login("flood-24") == PENDING
        assert await store.take_pending_login("flood-15") == PENDING
        assert await store.take_pending_login("flood-14") is None
        assert await store.take_pending_login("flood-0") is None

    async def test_ping_answers_when_the_store_is_up(self, backend: Backend) -> None:
        await backend.store.ping()
