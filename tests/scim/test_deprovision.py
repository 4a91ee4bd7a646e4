"""SCIM deactivation and deletion run the deprovisioning path before the IdP hears back (issue 3).

Agents log in through the real npm oidc-provider; the SCIM client then disables them, and by the time the
SCIM response arrives every session is gone and the proxy refuses the old cookie.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.timeutil import utcnow
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import OidcProviderFactory
from tests.scim.harness import SCIM_JSON, patch

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]
JSON = {"Accept": "application/json"}


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory) as deployed:
        yield deployed


async def scim_client(gateway: Deployment, name: str = "entra") -> httpx.AsyncClient:
    token = await gateway.services.scim_tokens.create(name, utcnow())
    client = httpx.AsyncClient(
        base_url=gateway.url + "/scim/v2",
        headers={"Authorization": f"Bearer {token}", "Content-Type": SCIM_JSON},
        timeout=10.0,
    )
    gateway.clients.append(client)
    return client


async def serves(gateway: Deployment, client: httpx.AsyncClient) -> bool:
    return (await client.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200


async def logged_in(gateway: Deployment, user: str) -> tuple[httpx.AsyncClient, str]:
    client = await gateway.login(user)
    assert await serves(gateway, client)
    agent = await gateway.services.agents.find(user)
    assert agent is not None
    return client, agent.id


@pytest.mark.parametrize(
    "body",
    [
        patch({"op": "Replace", "path": "active", "value": "False"}),
        patch({"op": "replace", "value": {"active": False}}),
    ],
    ids=["entra-string-false", "okta-pathless"],
)
async def test_a_scim_deactivation_kills_every_session_before_the_response(
    gateway: Deployment, body: dict[str, object]
) -> None:
    alice, agent_id = await logged_in(gateway, "alice")
    scim = await scim_client(gateway)
    response = await scim.patch(f"/Users/{agent_id}", json=body)
    assert response.status_code in (200, 204), response.text
    assert await gateway.services.sessions.sessions_of(agent_id, gateway.services.clock()) == []
    assert not await serves(gateway, alice)
    agent = await gateway.services.agents.get(agent_id)
    assert agent is not None and not agent.active


async def test_a_scim_delete_kills_sessions_and_the_deleted_agent_cannot_sign_in_again(gateway: Deployment) -> None:
    alice, agent_id = await logged_in(gateway, "alice")
    scim = await scim_client(gateway)
    assert (await scim.delete(f"/Users/{agent_id}")).status_code == 204
    assert await gateway.services.sessions.sessions_of(agent_id, gateway.services.clock()) == []
    assert not await serves(gateway, alice)
    assert (await scim.get(f"/Users/{agent_id}")).status_code == 404


async def test_the_deprovisioning_is_audited_with_the_scim_client_as_actor(gateway: Deployment) -> None:
    _, agent_id = await logged_in(gateway, "bob")
    scim = await scim_client(gateway, "okta-prod")
    await scim.put(
        f"/Users/{agent_id}",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "bob", "active": False},
    )
    await gateway.services.audit.flush()
    records = await gateway.services.audit._repository.tail(20)
    kinds = [(r.kind, r.actor) for r in records if r.agent_id == agent_id and r.kind != "request"]
    assert kinds.count(("deprovision", "scim:okta-prod")) == 1  # disabled once, in the SCIM write's transaction
    assert ("sessions_revoked", "scim:okta-prod") in kinds
    assert ("scim", "scim:okta-prod") in kinds


async def test_a_reactivated_agent_signs_in_again_but_its_old_sessions_stay_dead(gateway: Deployment) -> None:
    alice, agent_id = await logged_in(gateway, "alice")
    scim = await scim_client(gateway)
    await scim.patch(f"/Users/{agent_id}", json=patch({"op": "replace", "path": "active", "value": False}))
    await scim.patch(f"/Users/{agent_id}", json=patch({"op": "replace", "path": "active", "value": True}))
    assert not await serves(gateway, alice)
    again = await gateway.login("alice")
    assert await serves(gateway, again)
