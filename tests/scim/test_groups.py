"""Groups and memberships through /scim/v2, in the shapes Okta Group Push and Entra send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from tests.scim.harness import GROUP, USER, ScimGateway, patch, scim_gateway

ADSCIM = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[ScimGateway]:
    async with scim_gateway() as running:
        yield running


@pytest_asyncio.fixture
async def scim(gateway: ScimGateway) -> httpx.AsyncClient:
    return await gateway.client("idp")


async def new_user(scim: httpx.AsyncClient, name: str) -> str:
    response = await scim.post("/Users", json={"schemas": [USER], "userName": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def new_group(scim: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    response = await scim.post("/Groups", json={"schemas": [GROUP], "displayName": name, "members": [], **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def members(scim: httpx.AsyncClient, group_id: str) -> set[str]:
    return {m["value"] for m in (await scim.get(f"/Groups/{group_id}")).json().get("members", [])}


async def test_okta_group_push_create_lookup_membership_rename_and_delete(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    ana, ben = await new_user(scim, "ana"), await new_user(scim, "ben")
    group = await new_group(scim, "chat-agents")
    found = await scim.get("/Groups", params={"filter": 'displayName eq "chat-agents"', "startIndex": 1, "count": 100})
    assert [g["id"] for g in found.json()["Resources"]] == [group["id"]]
    gid = group["id"]
    add = patch({"op": "add", "path": "members", "value": [{"value": ana, "display": "ana"}, {"value": ben}]})
    assert (await scim.patch(f"/Groups/{gid}", json=add)).status_code in (200, 204)
    assert await members(scim, gid) == {ana, ben}
    assert await gateway.services.groups.names_of(ana) == {"chat-agents"}
    remove = patch({"op": "remove", "path": f'members[value eq "{ben}"]'})
    assert (await scim.patch(f"/Groups/{gid}", json=remove)).status_code in (200, 204)
    assert await members(scim, gid) == {ana}
    rename = patch({"op": "replace", "value": {"id": gid, "displayName": "chat-leads"}})
    assert (await scim.patch(f"/Groups/{gid}", json=rename)).status_code in (200, 204)
    assert await gateway.services.groups.names_of(ana) == {"chat-leads"}
    user = (await scim.get(f"/Users/{ana}")).json()
    assert [(g["value"], g["display"]) for g in user["groups"]] == [(gid, "chat-leads")]
    assert (await scim.delete(f"/Groups/{gid}")).status_code == 204
    assert (await scim.get(f"/Groups/{gid}")).status_code == 404
    assert await gateway.services.groups.names_of(ana) == frozenset()


async def test_okta_replace_members_with_the_full_list(scim: httpx.AsyncClient) -> None:
    ana, ben = await new_user(scim, "ana"), await new_user(scim, "ben")
    gid = (await new_group(scim, "phone", members=[{"value": ana}]))["id"]
    body = patch({"op": "replace", "path": "members", "value": [{"value": ben}]})
    assert (await scim.patch(f"/Groups/{gid}", json=body)).status_code in (200, 204)
    assert await members(scim, gid) == {ben}


async def test_entra_adscim_group_with_add_and_value_list_remove(scim: httpx.AsyncClient) -> None:
    ana, ben = await new_user(scim, "ana"), await new_user(scim, "ben")
    group = await new_group(scim, "mail", schemas=[GROUP, ADSCIM], externalId="8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159")
    gid = group["id"]
    add = patch({"op": "Add", "path": "members", "value": [{"$ref": None, "value": ana}, {"$ref": None, "value": ben}]})
    assert (await scim.patch(f"/Groups/{gid}", json=add)).status_code in (200, 204)
    remove = patch({"op": "Remove", "path": "members", "value": [{"value": ana}]})
    assert (await scim.patch(f"/Groups/{gid}", json=remove)).status_code in (200, 204)
    assert await members(scim, gid) == {ben}
    listed = await scim.get("/Groups", params={"excludedAttributes": "members", "filter": 'displayName eq "mail"'})
    assert listed.status_code == 200
    assert "members" not in listed.json()["Resources"][0]


async def test_a_member_that_is_not_a_user_is_an_invalid_value(scim: httpx.AsyncClient) -> None:
    response = await scim.post("/Groups", json={"schemas": [GROUP], "displayName": "x", "members": [{"value": "nope"}]})
    assert response.status_code == 400
    assert response.json()["scimType"] == "invalidValue" and "nope" in response.json()["detail"]


async def test_a_deleted_user_drops_out_of_its_groups(scim: httpx.AsyncClient) -> None:
    ana = await new_user(scim, "ana")
    gid = (await new_group(scim, "chat", members=[{"value": ana}]))["id"]
    assert (await scim.delete(f"/Users/{ana}")).status_code == 204
    assert await members(scim, gid) == set()


async def test_a_members_display_is_declared_read_only_and_answered_with_the_members_user_name(
    scim: httpx.AsyncClient,
) -> None:
    schema = (await scim.get(f"/Schemas/{GROUP}")).json()
    members = next(a for a in schema["attributes"] if a["name"] == "members")
    display = next(a for a in members["subAttributes"] if a["name"] == "display")
    assert display["mutability"] == "readOnly"
    ana = await new_user(scim, "ana")
    group = await new_group(scim, "mail-agents", members=[{"value": ana, "display": "Someone Else"}])
    assert [(m["value"], m["display"]) for m in group["members"]] == [(ana, "ana")]
