"""Store details outside the contract: the embedded store stays bounded, the factory, Redis URL hygiene."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import SecretStr

from gateway.errors import ConfigError, SessionStoreUnavailable
from gateway.sessions import memory
from gateway.sessions.base import PendingLogin, SessionData, SessionState
from gateway.sessions.factory import create_session_store
from gateway.sessions.memory import PURGE_INTERVAL_SECONDS, MemorySessionStore, expiry_state
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import SessionSettings

AGENT = SessionData(agent_id="a1", user_name="alice", issuer="https://idp.example.com", subject="s1")
PENDING = PendingLogin(state="s", nonce="n", code_verifier="v", return_to="/")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1000 + 599, SessionState.VALID),
        (1000 + 600, SessionState.IDLE_EXPIRED),
        (1000 + 3600, SessionState.ABSOLUTE_EXPIRED),
    ],
)
def test_expiry_state_counts_idle_from_last_seen_and_absolute_from_creation(now: float, expected: SessionState) -> None:
    assert expiry_state(1000, 1000, now, idle=600, absolute=3600) is expected


def test_the_absolute_limit_wins_over_a_fresh_idle_clock() -> None:
    assert expiry_state(0, 3599, 3600, idle=600, absolute=3600) is SessionState.ABSOLUTE_EXPIRED


async def test_expired_sessions_are_purged_by_a_later_login_without_being_looked_up() -> None:
    store = MemorySessionStore(600, 3600, "r1")
    for _ in range(100):
        await store.create(AGENT, 0)
    await store.create(AGENT, PURGE_INTERVAL_SECONDS + 600)
    assert len(store._sessions) == 1
    assert len(store._by_agent["a1"]) == 1


async def test_an_idp_sessions_index_goes_with_its_sessions_purged_by_a_later_login() -> None:
    store = MemorySessionStore(600, 3600, "r1")
    for n in range(100):
        await store.create(dataclasses.replace(AGENT, idp_session_id=f"sid-{n % 10}"), 0)
    await store.create(AGENT, PURGE_INTERVAL_SECONDS + 600)
    assert store._by_idp_session == {}
    assert await store.sessions_of_idp_session(AGENT.issuer, "sid-1", PURGE_INTERVAL_SECONDS + 600) == []


async def test_a_flood_of_unfinished_logins_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "MAX_PENDING_LOGINS", 10)
    store = MemorySessionStore(600, 3600, "r1")
    for i in range(25):
        await store.put_pending_login(f"login-{i}", PENDING, 600)
    assert len(store._pending) <= 10
    assert await store.take_pending_login("login-24") == PENDING
    assert await store.take_pending_login("login-0") is None


async def test_the_factory_builds_the_store_the_settings_name() -> None:
    embedded = create_session_store(SessionSettings(), "r1")
    assert isinstance(embedded, MemorySessionStore)
    assert (embedded.idle_timeout, embedded.replica_id) == (1800, "r1")
    settings = SessionSettings(store="redis", redis_url=SecretStr("redis://:pw@127.0.0.1:1/0"))
    shared = create_session_store(settings, "r2")
    assert isinstance(shared, RedisSessionStore)
    await shared.close()


async def test_an_unreachable_redis_fails_closed_without_naming_its_url_or_password() -> None:
    store = RedisSessionStore("redis://:hunter2@127.0.0.1:1/0", 600, 3600, "r1")
    try:
        with pytest.raises(SessionStoreUnavailable) as caught:
            await store.ping()
    finally:
        await store.close()
    text = f"{caught.value!s} {caught.value!r} {caught.value.detail} {caught.value.__cause__!r}"
    assert "hunter2" not in text
    assert "127.0.0.1" not in text


def test_a_malformed_redis_url_is_a_config_error_that_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisSessionStore("http://:hunter2@example/0", 600, 3600, "r1")
    assert "hunter2" not in str(caught.value)


async def test_a_group_update_for_an_unknown_agent_leaves_no_empty_index_behind() -> None:
    store = MemorySessionStore(600, 3600, "r1")
    assert await store.update_agent_groups("nobody", frozenset({"chat-agents"})) == 0
    assert store._by_agent == {}
    assert store._sessions == {}
