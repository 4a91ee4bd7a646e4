"""Replays of the request shapes Okta and Entra send (research note §1-2), each checked against the stored state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from tests.scim.harness import ENTERPRISE, USER, ScimGateway, patch, scim_gateway


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[ScimGateway]:
    async with scim_gateway() as running:
        yield running


@pytest_asyncio.fixture
async def scim(gateway: ScimGateway) -> httpx.AsyncClient:
    return await gateway.client("idp")


OKTA_CREATE: dict[str, Any] = {
    "schemas": [USER],
    "userName": "Test.User@example.com",
    "name": {"givenName": "Test", "familyName": "User"},
    "emails": [{"primary": True, "value": "test.user@example.com", "type": "work"}],
    "displayName": "Test User",
    "locale": "en-US",
    "externalId": "00ujl29u0le5T6Aj10h7",
    "groups": [],
    "password": "1mz050nq",
    "active": True,
}

ENTRA_CREATE: dict[str, Any] = {
    "schemas": [USER, ENTERPRISE],
    "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
    "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1",
    "active": True,
    "emails": [
        {"primary": True, "type": "work", "value": "Test_User_fd0ea19b-0777-472c-9f96-4f70d2226f2e@testuser.com"}
    ],
    "meta": {"resourceType": "User"},
    "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
    "roles": [],
    ENTERPRISE: {"employeeNumber": "1000", "department": "Sales"},
}


async def created(scim: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await scim.post("/Users", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


# ------------------------------------------------------------------------------------------------ Okta


async def test_okta_lookup_before_create_answers_an_empty_list(scim: httpx.AsyncClient) -> None:
    response = await scim.get(
        "/Users", params={"filter": 'userName eq "nobody@example.com"', "startIndex": "1", "count": "100"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["totalResults"] == 0 and body["Resources"] == []


async def test_okta_create_with_password_groups_and_locale_is_201_active(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    body = await created(scim, OKTA_CREATE)
    assert body["active"] is True and "password" not in body
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and agent.external_id == "00ujl29u0le5T6Aj10h7" and agent.may_sign_in
    again = await scim.post("/Users", json=OKTA_CREATE)
    assert again.status_code == 409


async def test_okta_spec_test_first_page_has_the_required_fields(scim: httpx.AsyncClient) -> None:
    await created(scim, OKTA_CREATE)
    body = (await scim.get("/Users", params={"count": "1", "startIndex": "1"})).json()
    first = body["Resources"][0]
    assert isinstance(body["totalResults"], int) and isinstance(body["itemsPerPage"], int)
    assert first["id"] and first["userName"] and first["name"]["givenName"] and first["name"]["familyName"]
    assert first["active"] is True and first["emails"][0]["value"]
    upper = await scim.get("/Users", params={"filter": 'userName eq "TEST.USER@EXAMPLE.COM"'})
    assert upper.status_code == 200 and upper.json()["totalResults"] == 1
    unknown = await scim.get("/Users/010101010101010101")
    assert unknown.status_code == 404 and unknown.json()["detail"]


async def test_okta_aiw_put_of_the_fetched_object_with_id_meta_and_groups_updates(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    body = await created(scim, OKTA_CREATE)
    fetched = (await scim.get(f"/Users/{body['id']}")).json()
    fetched["name"]["familyName"] = "Renamed"
    fetched["groups"] = []
    fetched["password"] = "another-dummy"
    response = await scim.put(f"/Users/{body['id']}", json=fetched)
    assert response.status_code == 200, response.text
    assert response.json()["name"]["familyName"] == "Renamed"


async def test_okta_aiw_put_with_active_false_deactivates(gateway: ScimGateway, scim: httpx.AsyncClient) -> None:
    body = await created(scim, OKTA_CREATE)
    fetched = (await scim.get(f"/Users/{body['id']}")).json()
    response = await scim.put(f"/Users/{body['id']}", json={**fetched, "active": False})
    assert response.status_code == 200, response.text
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and not agent.active


async def test_okta_oin_pathless_replace_deactivates(gateway: ScimGateway, scim: httpx.AsyncClient) -> None:
    body = await created(scim, OKTA_CREATE)
    response = await scim.patch(f"/Users/{body['id']}", json=patch({"op": "replace", "value": {"active": False}}))
    assert response.status_code in (200, 204), response.text
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and not agent.active


# ------------------------------------------------------------------------------------------------ Entra


async def test_entra_test_connection_with_a_random_guid_answers_an_empty_list(scim: httpx.AsyncClient) -> None:
    response = await scim.get("/Users", params={"filter": 'userName eq "b7f0b8b2-4f0b-4c5e-9a43-7a5e3ee4c0f1"'})
    assert response.status_code == 200 and response.json()["totalResults"] == 0
    response = await scim.get("/Users", params={"filter": 'externalId eq "b7f0b8b2-4f0b-4c5e-9a43-7a5e3ee4c0f1"'})
    assert response.status_code == 200 and response.json()["totalResults"] == 0


async def test_entra_create_with_meta_roles_and_enterprise_extension(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    body = await created(scim, ENTRA_CREATE)
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and agent.employee_number == "1000"
    found = await scim.get(
        "/Users",
        params={
            "filter": 'emails[type eq "work"].value eq "test_user_fd0ea19b-0777-472c-9f96-4f70d2226f2e@testuser.com"'
        },
    )
    assert found.json()["totalResults"] == 1


async def test_entra_disable_with_capitalised_op_and_string_false(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    body = await created(scim, ENTRA_CREATE)
    response = await scim.patch(
        f"/Users/{body['id']}", json=patch({"op": "Replace", "path": "active", "value": "False"})
    )
    assert response.status_code in (200, 204), response.text
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and not agent.active
    assert (await scim.get(f"/Users/{body['id']}")).json()["active"] is False


async def test_entra_pathless_replace_with_dotted_and_urn_keys(gateway: ScimGateway, scim: httpx.AsyncClient) -> None:
    body = await created(scim, ENTRA_CREATE)
    response = await scim.patch(
        f"/Users/{body['id']}",
        json=patch(
            {
                "op": "replace",
                "value": {"name.givenName": "Ada", f"{ENTERPRISE}:employeeNumber": "2000", "displayName": "Ada L"},
            }
        ),
    )
    assert response.status_code in (200, 204), response.text
    read = (await scim.get(f"/Users/{body['id']}")).json()
    assert read["name"]["givenName"] == "Ada" and read[ENTERPRISE]["employeeNumber"] == "2000"
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and agent.employee_number == "2000" and agent.display_name == "Ada L"


async def test_entra_add_to_an_unmatched_filtered_path_creates_the_entry(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    body = await created(scim, {**ENTRA_CREATE, "emails": []})
    response = await scim.patch(
        f"/Users/{body['id']}",
        json=patch({"op": "Add", "path": 'emails[type eq "work"].value', "value": "new.work@example.com"}),
    )
    assert response.status_code in (200, 204), response.text
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and agent.email == "new.work@example.com"


async def test_entra_manager_as_a_bare_string(gateway: ScimGateway, scim: httpx.AsyncClient) -> None:
    boss = await created(scim, {**ENTRA_CREATE, "userName": "boss", "externalId": "boss"})
    body = await created(scim, ENTRA_CREATE)
    response = await scim.patch(
        f"/Users/{body['id']}", json=patch({"op": "Add", "path": f"{ENTERPRISE}:manager", "value": boss["id"]})
    )
    assert response.status_code in (200, 204), response.text
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and agent.manager_id == boss["id"]
    read = (await scim.get(f"/Users/{body['id']}")).json()
    assert read[ENTERPRISE]["manager"]["value"] == boss["id"]
    on_create = await created(scim, {**ENTRA_CREATE, "userName": "report2", ENTERPRISE: {"manager": boss["id"]}})
    assert on_create[ENTERPRISE]["manager"]["value"] == boss["id"]
    found = await scim.get("/Users", params={"filter": f'{ENTERPRISE}:manager.value eq "{boss["id"]}"'})
    assert found.json()["totalResults"] == 2


async def test_a_deactivation_with_a_failing_operation_still_disables_and_reports_the_error(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    body = await created(scim, ENTRA_CREATE)
    response = await scim.patch(
        f"/Users/{body['id']}",
        json=patch(
            {"op": "Replace", "path": "active", "value": "False"},
            {"op": "replace", "path": "userName", "value": 42},
        ),
    )
    assert response.status_code == 400, response.text
    assert response.json()["scimType"] and response.json()["detail"]
    agent = await gateway.services.agents.get(body["id"])
    assert agent is not None and not agent.active
    # Disabled by the fail-closed path, not by the failed transaction: its pipeline run is queued all the same.
    runs = await gateway.services.pipeline.runs_of_agent(body["id"])
    assert [run.source for run in runs] == ["scim"]
