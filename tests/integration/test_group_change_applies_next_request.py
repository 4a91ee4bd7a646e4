"""A group membership change alters the agent's authorization on their very next request (ASVS 8.3.2).

The real gateway in front of echo consoles, with the embedded store and with Redis: bob signs in with chat-agents
only; a directory change pushed through ``SessionStore.update_agent_groups`` opens /phone/ and closes /chat/ on the
next request, without a new login. With Redis the change may come from another replica's store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.sessions.local_cache import CachedSessionStore
from gateway.sessions.redis_store import RedisSessionStore
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

JSON = {"Accept": "application/json"}


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cached", marks=pytest.mark.redis),
    ]
)
def store(request: pytest.FixtureRequest) -> tuple[str | None, str]:
    """(Redis URL or None, extra [sessions] TOML): the in-process session cache must not delay a change either."""
    if request.param == "memory":
        return None, ""
    url: str = request.getfixturevalue("redis_url")
    return url, ("local_cache_seconds = 5" if request.param == "redis-cached" else "")


@pytest.fixture
async def gateway(
    store: tuple[str | None, str], oidc_provider_factory: OidcProviderFactory
) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory, redis_url=store[0], extra_sessions_toml=store[1]) as deployed:
        yield deployed


async def _agent_id(gateway: Deployment, user_name: str) -> str:
    agent = await gateway.services.agents.find_by_user_name(user_name)
    assert agent is not None
    return agent.id


async def _status(gateway: Deployment, client: httpx.AsyncClient, channel: str) -> int:
    """The status of ``/{channel}/echo``; a refusal must be the group rule's, not a lost session."""
    response = await client.get(f"{gateway.url}/{channel}/echo", headers=JSON)
    if response.status_code == 403:
        assert response.json()["error"] == "forbidden", response.text
    return response.status_code


async def test_a_group_change_opens_and_closes_channels_on_the_very_next_request(gateway: Deployment) -> None:
    bob = await gateway.login("bob")
    bob_id = await _agent_id(gateway, "bob")
    phone, chat = gateway.consoles["phone"], gateway.consoles["chat"]
    assert await _status(gateway, bob, "phone") == 403
    assert phone.seen == []

    added = frozenset({"chat-agents", "phone-agents"})
    assert await gateway.services.sessions.update_agent_groups(bob_id, added) == 1
    response = await bob.get(gateway.url + "/phone/echo", headers=JSON)
    assert response.status_code == 200
    assert response.json()["channel"] == "phone"
    assert len(phone.seen) == 1
    [assertion] = phone.seen[0].values("x-channelgate-assertion")
    assert (await gateway.verify_assertion(assertion, "phone"))["groups"] == sorted(added)

    reached_chat = len(chat.seen)
    assert await gateway.services.sessions.update_agent_groups(bob_id, frozenset({"phone-agents"})) == 1
    assert await _status(gateway, bob, "chat") == 403
    assert len(chat.seen) == reached_chat
    assert await _status(gateway, bob, "phone") == 200


async def test_a_group_change_reaches_every_session_of_the_agent_and_no_other_agent(gateway: Deployment) -> None:
    first, second = await gateway.login("bob"), await gateway.login("bob")
    alice = await gateway.login("alice")
    removed = frozenset[str]()
    assert await gateway.services.sessions.update_agent_groups(await _agent_id(gateway, "bob"), removed) == 2
    assert [await _status(gateway, client, "chat") for client in (first, second)] == [403, 403]
    assert [await _status(gateway, alice, channel) for channel in ("chat", "phone", "mail")] == [200, 200, 200]


@pytest.fixture
async def redis_gateway(redis_url: str, oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory, redis_url=redis_url) as deployed:
        yield deployed


@pytest.mark.redis
async def test_a_group_change_made_by_another_replica_applies_on_the_next_request(
    redis_gateway: Deployment, redis_url: str
) -> None:
    gateway = redis_gateway
    bob = await gateway.login("bob")
    assert await _status(gateway, bob, "phone") == 403
    other_replica = RedisSessionStore(redis_url, 600, 3600, "replica-other")
    try:
        added = frozenset({"chat-agents", "phone-agents"})
        assert await other_replica.update_agent_groups(await _agent_id(gateway, "bob"), added) == 1
    finally:
        await other_replica.close()
    assert await _status(gateway, bob, "phone") == 200


@pytest.mark.redis
async def test_with_the_session_cache_a_group_change_by_another_replica_applies_as_the_broadcast_arrives(
    redis_url: str, oidc_provider_factory: OidcProviderFactory
) -> None:
    """The cached copy (kept 30 s here) is dropped by the refresh broadcast, not by its age."""
    cached = "local_cache_seconds = 30"
    async with deployment(oidc_provider_factory, redis_url=redis_url, extra_sessions_toml=cached) as gateway:
        bob = await gateway.login("bob")
        assert await _status(gateway, bob, "phone") == 403  # cached now, with bob's old groups
        assert await _status(gateway, bob, "phone") == 403
        assert isinstance(gateway.services.sessions, CachedSessionStore) and gateway.services.sessions.hits >= 1
        other_replica = RedisSessionStore(redis_url, 600, 3600, "replica-other")
        try:
            added = frozenset({"chat-agents", "phone-agents"})
            assert await other_replica.update_agent_groups(await _agent_id(gateway, "bob"), added) == 1
        finally:
            await other_replica.close()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while await _status(gateway, bob, "phone") != 200:
            assert loop.time() - started < 1.0, "the cached session kept its old groups"
            await asyncio.sleep(0.005)
