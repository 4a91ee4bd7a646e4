"""A disablement written to a real ``slapd`` ends the agent's sessions in the running gateway within seconds,
through the RFC 4533 change feed, for every disable mechanism; the time from the LDAP write to the first refused
request is measured (issue 6's goal: p99 < 2 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from gateway.directory.store import DirectoryStore
from tests.components.asgi_server import bound_socket
from tests.components.echo_gateway import Deployment, deployment, eventually
from tests.components.inprocess import running_gateway
from tests.components.ldap_server import (
    FORMER,
    GROUPS,
    PEOPLE,
    LdapServer,
    group_ldif,
    person_ldif,
)
from tests.components.ldap_stack import feed_toml
from tests.components.oidc_provider import OidcProviderFactory
from tests.components.ports import LOOPBACK

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

JSON = {"Accept": "application/json"}
#: The issue's goal for a disable reaching the gateway through the feed.
REFUSAL_WITHIN_SECONDS = 2.0


@pytest.fixture
def directory() -> Iterator[LdapServer]:
    with LdapServer() as server:
        people = "\n".join(person_ldif(name) for name in ("alice", "bob", "carol"))
        groups = group_ldif("agents", ["alice", "bob", "carol"]) + "\n" + group_ldif("chat-agents", ["alice", "bob"])
        server.add(people + "\n" + groups)
        yield server


def _toml(directory: LdapServer) -> str:
    return feed_toml(directory, max_share=0.5, min_agents=5)


@pytest.fixture
async def gateway(directory: LdapServer, oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory, extra_toml=_toml(directory)) as deployed:
        store = DirectoryStore(deployed.services.database.engine, "directory")
        deadline = time.monotonic() + 20
        while (await store.state()).feed_state != "live":
            assert time.monotonic() < deadline, await store.state()
            await asyncio.sleep(0.02)
        yield deployed


def _modify(dn: str, *lines: str) -> str:
    return "\n".join([f"dn: {dn}", "changetype: modify", *lines]) + "\n"


BOB = f"uid=bob,{PEOPLE}"
MECHANISMS: dict[str, Callable[[], str]] = {
    "ad-disabled-bit": lambda: _modify(BOB, "replace: userAccountControl", "userAccountControl: 514"),
    "ppolicy-lock": lambda: _modify(BOB, "replace: pwdAccountLockedTime", "pwdAccountLockedTime: 000001010000Z"),
    "ns-account-lock": lambda: _modify(BOB, "replace: nsAccountLock", "nsAccountLock: true"),
    "left-agents-group": lambda: _modify(f"cn=agents,{GROUPS}", "delete: member", f"member: {BOB}"),
    "deleted": lambda: f"dn: {BOB}\nchangetype: delete\n",
    "moved-out": lambda: f"dn: {BOB}\nchangetype: modrdn\nnewrdn: uid=bob\ndeleteoldrdn: 1\nnewsuperior: {FORMER}\n",
}


async def _refused_after(client: httpx.AsyncClient, url: str, started: float) -> float:
    while True:
        response = await client.get(url, headers=JSON)
        if response.status_code != 200:
            assert response.status_code == 401, response.text
            return time.perf_counter() - started
        assert time.perf_counter() - started < 10, "the disable never reached the gateway"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
async def test_an_ldap_disable_ends_the_agents_sessions_through_the_change_feed_within_two_seconds(
    gateway: Deployment, directory: LdapServer, mechanism: str
) -> None:
    bob, alice = await gateway.login("bob"), await gateway.login("alice")
    echo = gateway.url + "/chat/echo"
    assert (await bob.get(echo, headers=JSON)).status_code == 200
    agent = await gateway.services.agents.find_by_user_name("bob")
    assert agent is not None and agent.source == "ldap"

    started = time.perf_counter()
    await asyncio.to_thread(directory.modify, MECHANISMS[mechanism]())
    elapsed = await _refused_after(bob, echo, started)

    print(f"\nLDAP {mechanism} → first refusal: {elapsed * 1000:.0f} ms")
    assert elapsed < REFUSAL_WITHIN_SECONDS
    assert (await alice.get(echo, headers=JSON)).status_code == 200

    # The sessions end first; the disable and its queued run are written right after (gateway/deprovision/kill.py).
    async def disabled() -> bool:
        found = await gateway.services.agents.get(agent.id)
        return found is not None and not found.active

    await eventually(disabled, timeout=REFUSAL_WITHIN_SECONDS)
    [run] = await gateway.services.pipeline.runs_of_agent(agent.id)
    assert (run.source, run.actor) == ("ldap", "ldap:directory")
    assert await gateway.services.sessions.sessions_of(agent.id, time.time()) == []


async def test_leaving_a_directory_group_closes_its_channel_on_the_live_session_without_a_new_login(
    gateway: Deployment, directory: LdapServer
) -> None:
    bob = await gateway.login("bob")
    echo = gateway.url + "/chat/echo"
    assert (await bob.get(echo, headers=JSON)).status_code == 200

    started = time.perf_counter()
    await asyncio.to_thread(directory.modify, _modify(f"cn=chat-agents,{GROUPS}", "delete: member", f"member: {BOB}"))
    while (response := await bob.get(echo, headers=JSON)).status_code == 200:
        assert time.perf_counter() - started < 10, "the group change never reached the session"
        await asyncio.sleep(0.005)
    assert response.status_code == 403, response.text
    assert time.perf_counter() - started < REFUSAL_WITHIN_SECONDS
    agent = await gateway.services.agents.find_by_user_name("bob")
    assert agent is not None and agent.active
    assert await gateway.services.groups.names_of(agent.id) == {"agents"}
    assert len(await gateway.services.sessions.sessions_of(agent.id, time.time())) == 1


@pytest.mark.redis
async def test_an_ldap_disable_ends_the_session_on_the_other_replica_too(
    directory: LdapServer, oidc_provider_factory: OidcProviderFactory, redis_url: str
) -> None:
    async with deployment(oidc_provider_factory, redis_url=redis_url, extra_toml=_toml(directory)) as first:
        store = DirectoryStore(first.services.database.engine, "directory")
        sock = bound_socket()
        try:
            async with running_gateway(first.services.settings, sock):
                second_echo = f"http://{LOOPBACK}:{sock.getsockname()[1]}/chat/echo"
                deadline = time.monotonic() + 20
                while (await store.state()).feed_state != "live":
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                bob = await first.login("bob")
                assert (await bob.get(second_echo, headers=JSON)).status_code == 200

                started = time.perf_counter()
                await asyncio.to_thread(directory.modify, MECHANISMS["ad-disabled-bit"]())
                elapsed = await _refused_after(bob, second_echo, started)
                assert elapsed < REFUSAL_WITHIN_SECONDS
                assert (await bob.get(first.url + "/chat/echo", headers=JSON)).status_code == 401
        finally:
            sock.close()


async def test_re_enabling_in_the_directory_reactivates_the_agent_but_its_old_sessions_stay_ended(
    gateway: Deployment, directory: LdapServer
) -> None:
    old = await gateway.login("bob")
    echo = gateway.url + "/chat/echo"
    await asyncio.to_thread(directory.modify, MECHANISMS["ad-disabled-bit"]())
    await _refused_after(old, echo, time.perf_counter())
    # The sessions end before the disable commits (gateway/deprovision/kill.py: first kill, then the transaction):
    # re-enabling in the directory before the agent is seen disabled would race the disable, which wins.
    deadline = time.monotonic() + 10
    while (agent := await gateway.services.agents.find_by_user_name("bob")) and agent.active:
        assert time.monotonic() < deadline, "bob was never disabled"
        await asyncio.sleep(0.01)

    await asyncio.to_thread(directory.modify, _modify(BOB, "replace: userAccountControl", "userAccountControl: 512"))
    deadline = time.monotonic() + 10
    while not (agent := await gateway.services.agents.find_by_user_name("bob")) or not agent.active:
        assert time.monotonic() < deadline, "bob was never reactivated"
        await asyncio.sleep(0.01)
    assert (await old.get(echo, headers=JSON)).status_code == 401
    fresh = await gateway.login("bob")
    assert (await fresh.get(echo, headers=JSON)).status_code == 200
