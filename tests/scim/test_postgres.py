"""The SCIM flows every IdP depends on, against PostgreSQL (asyncpg) instead of SQLite.

The case-insensitive userName lookup, the soft delete and the rehire rest on ``user_name_key`` and a unique
index over live rows, whose behaviour differs between the two databases if either is wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from tests.scim.harness import ScimGateway, patch, scim_gateway
from tests.scim.test_users import create, user


@pytest_asyncio.fixture
async def gateway(postgres_url: str) -> AsyncIterator[ScimGateway]:
    async with scim_gateway(postgres_url) as running:
        yield running


@pytest_asyncio.fixture
async def scim(gateway: ScimGateway) -> httpx.AsyncClient:
    return await gateway.client("entra")


async def test_the_gateway_under_test_runs_on_postgresql(gateway: ScimGateway) -> None:
    assert gateway.services.database.engine.dialect.name == "postgresql"


async def test_a_created_user_is_found_by_user_name_whatever_the_case(scim: httpx.AsyncClient) -> None:
    created = await create(scim, "Ana.Silva@Example.org", externalId="ext-ana")
    await create(scim, "other@example.org")
    for spelled in ("Ana.Silva@Example.org", "ana.silva@example.org", "ANA.SILVA@EXAMPLE.ORG"):
        found = (await scim.get("/Users", params={"filter": f'userName eq "{spelled}"'})).json()
        assert found["totalResults"] == 1, spelled
        assert [r["id"] for r in found["Resources"]] == [created["id"]]
    duplicate = await scim.post("/Users", json=user("ANA.SILVA@example.org"))
    assert duplicate.status_code == 409 and duplicate.json()["scimType"] == "uniqueness"


async def test_entra_string_false_deactivates_and_the_user_stays_readable(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    created = await create(scim, "leaver@example.org")
    response = await scim.patch(
        f"/Users/{created['id']}", json=patch({"op": "Replace", "path": "active", "value": "False"})
    )
    assert response.status_code in (200, 204), response.text
    agent = await gateway.services.agents.get(created["id"])
    assert agent is not None and agent.active is False
    read = await scim.get(f"/Users/{created['id']}")
    assert read.status_code == 200 and read.json()["active"] is False


async def test_delete_answers_404_afterwards_and_the_user_name_can_be_rehired(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    created = await create(scim, "Rehire@example.org")
    assert (await scim.delete(f"/Users/{created['id']}")).status_code == 204
    assert (await scim.get(f"/Users/{created['id']}")).status_code == 404
    assert (await scim.delete(f"/Users/{created['id']}")).status_code == 404
    gone = (await scim.get("/Users", params={"filter": 'userName eq "rehire@example.org"'})).json()
    assert gone["totalResults"] == 0
    rehired = await create(scim, "rehire@EXAMPLE.org")
    assert rehired["id"] != created["id"] and rehired["active"] is True
    found = (await scim.get("/Users", params={"filter": 'userName eq "REHIRE@example.org"'})).json()
    assert [r["id"] for r in found["Resources"]] == [rehired["id"]]
    agent = await gateway.services.agents.get(rehired["id"])
    assert agent is not None and agent.active is True
