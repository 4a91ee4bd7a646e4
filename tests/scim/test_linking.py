"""A SCIM-provisioned agent meets its first OIDC login: linked by ``[scim] link_by``, groups from the directory.

The IdP provisions alice through /scim/v2 and puts her in groups; alice then signs in through the real npm
oidc-provider (sub ``alice-0001``, ID-token groups chat, phone, mail and supervisors) and must land on that same
agent, carrying only the groups the directory gave her.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.timeutil import utcnow
from tests.components.browserless_login import complete_login, login_steps
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import DEMO_PASSWORD, STANDARD_ACCOUNTS, OidcProviderFactory
from tests.scim.harness import GROUP, SCIM_JSON, USER, patch

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]
JSON = {"Accept": "application/json"}
ALICE = STANDARD_ACCOUNTS[0]

#: rule → the SCIM User the IdP provisions for alice so that the rule names her.
RULES: dict[str, dict[str, Any]] = {
    "external_id_is_sub": {"userName": "alice.example", "externalId": ALICE.sub},
    "user_name_is_preferred_username": {"userName": "ALICE", "externalId": "okta-00u1"},
    "user_name_is_email": {"userName": ALICE.email, "externalId": "okta-00u1"},
}


@pytest.fixture(params=sorted(RULES))
def rule(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory, rule: str) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory, extra_server_toml=f'\n[scim]\nlink_by = "{rule}"\n') as deployed:
        yield deployed


async def scim_client(gateway: Deployment) -> httpx.AsyncClient:
    token = await gateway.services.scim_tokens.create("okta", utcnow())
    client = httpx.AsyncClient(
        base_url=gateway.url + "/scim/v2",
        headers={"Authorization": f"Bearer {token}", "Content-Type": SCIM_JSON},
        timeout=10.0,
    )
    gateway.clients.append(client)
    return client


async def provision(scim: httpx.AsyncClient, user: dict[str, Any], *groups: str) -> dict[str, Any]:
    response = await scim.post("/Users", json={"schemas": [USER], "active": True, **user})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    for name in groups:
        body = {"schemas": [GROUP], "displayName": name, "members": [{"value": created["id"]}]}
        assert (await scim.post("/Groups", json=body)).status_code == 201
    return created


async def status(gateway: Deployment, client: httpx.AsyncClient, channel: str) -> int:
    return (await client.get(f"{gateway.url}/{channel}/echo", headers=JSON)).status_code


async def refused_login(gateway: Deployment) -> httpx.Response:
    client = httpx.AsyncClient(timeout=10.0)
    gateway.clients.append(client)
    steps = await login_steps(gateway.url, ALICE.username, DEMO_PASSWORD, "/", client)
    return await complete_login(client, steps.callback_url)


async def test_alice_signs_in_as_her_scim_agent_with_only_the_directory_groups_until_scim_disables_her(
    gateway: Deployment, rule: str
) -> None:
    scim = await scim_client(gateway)
    created = await provision(scim, RULES[rule], "chat-agents")

    alice = await gateway.login(ALICE.username)

    agent = await gateway.services.agents.find_by_oidc(gateway.services.settings.oidc.issuer, ALICE.sub)
    assert agent is not None
    assert (agent.id, agent.source, agent.user_name) == (created["id"], "scim", RULES[rule]["userName"])
    assert [a.id for a in await gateway.services.agents.list()] == [created["id"]]
    fetched = await scim.get(f"/Users/{created['id']}")
    assert fetched.status_code == 200
    assert (fetched.json()["id"], fetched.json()["meta"]["version"]) == (created["id"], created["meta"]["version"])
    # The ID token also says phone-agents; the directory does not, and the directory wins.
    assert await status(gateway, alice, "chat") == 200
    assert await status(gateway, alice, "phone") == 403
    sessions = await gateway.services.sessions.sessions_of(agent.id, gateway.services.clock())
    assert [s.data.groups for s in sessions] == [frozenset({"chat-agents"})]

    disable = patch({"op": "replace", "path": "active", "value": False})
    assert (await scim.patch(f"/Users/{created['id']}", json=disable)).status_code in (200, 204)

    assert await status(gateway, alice, "chat") == 401
    again = await refused_login(gateway)
    assert again.status_code == 403
    assert "ended by your organisation" in again.text


@pytest.mark.parametrize("rule", ["user_name_is_preferred_username"], indirect=True)
async def test_a_group_the_directory_removed_does_not_come_back_at_the_next_login(gateway: Deployment) -> None:
    scim = await scim_client(gateway)
    created = await provision(scim, RULES["user_name_is_preferred_username"], "chat-agents", "phone-agents")
    alice = await gateway.login(ALICE.username)
    assert await status(gateway, alice, "phone") == 200
    phone = (await scim.get("/Groups", params={"filter": 'displayName eq "phone-agents"'})).json()["Resources"][0]

    remove = patch({"op": "remove", "path": f'members[value eq "{created["id"]}"]'})
    assert (await scim.patch(f"/Groups/{phone['id']}", json=remove)).status_code in (200, 204)

    assert await status(gateway, alice, "phone") == 403
    again = await gateway.login(ALICE.username)
    assert await status(gateway, again, "phone") == 403
    assert await status(gateway, again, "chat") == 200


@pytest.mark.parametrize("rule", ["user_name_is_preferred_username"], indirect=True)
async def test_a_disabled_scim_agent_first_login_links_it_and_shows_the_access_ended_page(
    gateway: Deployment,
) -> None:
    scim = await scim_client(gateway)
    created = await provision(scim, {**RULES["user_name_is_preferred_username"], "active": False}, "chat-agents")

    response = await refused_login(gateway)

    assert response.status_code == 403
    assert "ended by your organisation" in response.text
    agent = await gateway.services.agents.find_by_oidc(gateway.services.settings.oidc.issuer, ALICE.sub)
    assert agent is not None and agent.id == created["id"]
    assert await gateway.services.sessions.sessions_of(agent.id, gateway.services.clock()) == []


@pytest.mark.parametrize("rule", ["external_id_is_sub"], indirect=True)
async def test_a_scim_agent_the_rule_does_not_name_is_refused_by_user_name_not_linked(gateway: Deployment) -> None:
    scim = await scim_client(gateway)
    created = await provision(scim, {"userName": "alice", "externalId": "someone-else"}, "chat-agents")

    response = await refused_login(gateway)

    assert response.status_code == 403
    assert await gateway.services.agents.find_by_oidc(gateway.services.settings.oidc.issuer, ALICE.sub) is None
    agent = await gateway.services.agents.get(created["id"])
    assert agent is not None and agent.oidc_subject is None
