"""Users on our database through /scim/v2: CRUD, PATCH, paging, projections, ETags and the lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.scim.harness import ENTERPRISE, SCIM_JSON, USER, ScimGateway, patch, scim_gateway


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[ScimGateway]:
    async with scim_gateway() as running:
        yield running


@pytest_asyncio.fixture
async def scim(gateway: ScimGateway) -> httpx.AsyncClient:
    return await gateway.client("okta")


def user(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "schemas": [USER, ENTERPRISE],
        "userName": name,
        "name": {"givenName": name.split("@")[0].title(), "familyName": "Agent"},
        "emails": [{"value": name, "type": "work", "primary": True}],
        "active": True,
        **extra,
    }


async def create(scim: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    response = await scim.post("/Users", json=user(name, **extra))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_created_user_is_an_agent_and_reads_back_as_sent(gateway: ScimGateway, scim: httpx.AsyncClient) -> None:
    created = await create(
        scim, "ana@example.org", externalId="00u1", **{ENTERPRISE: {"employeeNumber": "42", "department": "Chat"}}
    )
    assert created["active"] is True
    assert created["meta"]["location"] == f"{gateway.scim_url}/Users/{created['id']}"
    assert created["meta"]["version"] == 'W/"1"'
    agent = await gateway.services.agents.get(created["id"])
    assert agent is not None
    assert (agent.user_name, agent.email, agent.external_id, agent.source, agent.employee_number) == (
        "ana@example.org",
        "ana@example.org",
        "00u1",
        "scim",
        "42",
    )
    read = await scim.get(f"/Users/{created['id']}")
    assert read.status_code == 200
    assert read.headers["content-type"].startswith(SCIM_JSON)
    assert read.json()["name"]["givenName"] == "Ana"
    assert read.json()[ENTERPRISE]["department"] == "Chat"
    assert read.headers["etag"] == 'W/"1"'


async def test_the_dummy_password_okta_sends_is_never_stored_or_returned(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    created = await create(scim, "pw@example.org", password="t1meMa$heen", groups=[], locale="en-US")
    assert "password" not in created
    async with gateway.services.database.engine.connect() as conn:
        from sqlalchemy import text

        stored = (await conn.execute(text("SELECT attributes FROM agents WHERE id = :id"), {"id": created["id"]})).one()
    assert "t1meMa$heen" not in str(stored[0])


async def test_a_duplicate_user_name_is_409_uniqueness_whatever_its_case(scim: httpx.AsyncClient) -> None:
    await create(scim, "dup@example.org")
    response = await scim.post("/Users", json=user("DUP@example.org"))
    assert response.status_code == 409
    body = response.json()
    assert body["status"] == "409" and body["scimType"] == "uniqueness"
    assert "already taken" in body["detail"]


async def test_delete_is_204_then_404_for_every_operation_and_the_user_name_can_be_rehired(
    scim: httpx.AsyncClient,
) -> None:
    created = await create(scim, "leaver@example.org")
    uid = created["id"]
    assert (await scim.delete(f"/Users/{uid}")).status_code == 204
    assert (await scim.delete(f"/Users/{uid}")).status_code == 404
    missing = await scim.get(f"/Users/{uid}")
    assert missing.status_code == 404
    assert missing.json()["status"] == "404" and missing.json()["detail"]
    assert (await scim.put(f"/Users/{uid}", json=user("leaver@example.org"))).status_code == 404
    assert (
        await scim.patch(f"/Users/{uid}", json=patch({"op": "replace", "path": "displayName", "value": "x"}))
    ).status_code == 404
    listed = await scim.get("/Users", params={"filter": 'userName eq "leaver@example.org"'})
    assert listed.json()["totalResults"] == 0
    rehired = await create(scim, "leaver@example.org")
    assert rehired["id"] != uid


async def test_paging_is_stable_and_numbers_are_integers(scim: httpx.AsyncClient) -> None:
    ids = [(await create(scim, f"p{i}@example.org"))["id"] for i in range(5)]
    first = (await scim.get("/Users", params={"startIndex": 1, "count": 2})).json()
    second = (await scim.get("/Users", params={"startIndex": 3, "count": 2})).json()
    third = (await scim.get("/Users", params={"startIndex": 5, "count": 2})).json()
    assert first["totalResults"] == 5 and isinstance(first["totalResults"], int)
    assert first["startIndex"] == 1 and first["itemsPerPage"] == 2
    seen = [r["id"] for page in (first, second, third) for r in page["Resources"]]
    assert seen == ids


async def test_filters_go_through_the_allow_list_and_unknown_attributes_are_refused(scim: httpx.AsyncClient) -> None:
    await create(scim, "Filter.Me@example.org", externalId="ext-1")
    await create(scim, "other@example.org")
    found = (await scim.get("/Users", params={"filter": 'userName eq "FILTER.ME@EXAMPLE.ORG"'})).json()
    assert [r["userName"] for r in found["Resources"]] == ["Filter.Me@example.org"]
    found = (
        await scim.get("/Users", params={"filter": 'emails[type eq "work"].value eq "filter.me@example.org"'})
    ).json()
    assert found["totalResults"] == 1
    found = (await scim.get("/Users", params={"filter": 'externalId eq "ext-1" and active eq true'})).json()
    assert found["totalResults"] == 1
    refused = await scim.get("/Users", params={"filter": 'nickName eq "zzz"'})
    assert refused.status_code == 400
    assert refused.json()["scimType"] == "invalidFilter"
    assert refused.json()["detail"]


async def test_search_by_post_dot_search(scim: httpx.AsyncClient) -> None:
    await create(scim, "searched@example.org")
    response = await scim.post(
        "/Users/.search",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": 'userName eq "searched@example.org"',
            "attributes": ["userName"],
        },
    )
    assert response.status_code == 200, response.text
    resources = response.json()["Resources"]
    assert [r["userName"] for r in resources] == ["searched@example.org"]
    assert "emails" not in resources[0]


async def test_attributes_and_excluded_attributes_project_the_response(scim: httpx.AsyncClient) -> None:
    created = await create(scim, "proj@example.org")
    only = (await scim.get(f"/Users/{created['id']}", params={"attributes": "userName"})).json()
    assert "userName" in only and "emails" not in only and "id" in only
    without = (await scim.get(f"/Users/{created['id']}", params={"excludedAttributes": "emails"})).json()
    assert "emails" not in without and without["userName"] == "proj@example.org"


async def test_if_match_with_a_stale_version_is_412_and_changes_nothing(scim: httpx.AsyncClient) -> None:
    created = await create(scim, "etag@example.org")
    uid = created["id"]
    changed = await scim.patch(f"/Users/{uid}", json=patch({"op": "replace", "path": "displayName", "value": "One"}))
    assert changed.status_code in (200, 204)
    stale = await scim.put(
        f"/Users/{uid}", json=user("etag@example.org", displayName="Two"), headers={"If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412
    assert stale.json()["detail"]
    current = await scim.get(f"/Users/{uid}")
    assert current.json()["displayName"] == "One"
    fresh = await scim.put(
        f"/Users/{uid}", json=user("etag@example.org", displayName="Two"), headers={"If-Match": current.headers["etag"]}
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["displayName"] == "Two"


async def test_a_deactivated_user_is_still_readable_with_active_false(
    gateway: ScimGateway, scim: httpx.AsyncClient
) -> None:
    created = await create(scim, "paused@example.org")
    response = await scim.patch(f"/Users/{created['id']}", json=patch({"op": "replace", "value": {"active": False}}))
    assert response.status_code in (200, 204), response.text
    read = await scim.get(f"/Users/{created['id']}")
    assert read.status_code == 200 and read.json()["active"] is False
    agent = await gateway.services.agents.get(created["id"])
    assert agent is not None and not agent.active and agent.disabled_reason


async def test_reactivation_enables_the_agent_again(gateway: ScimGateway, scim: httpx.AsyncClient) -> None:
    created = await create(scim, "back@example.org")
    await scim.patch(f"/Users/{created['id']}", json=patch({"op": "replace", "path": "active", "value": False}))
    response = await scim.patch(
        f"/Users/{created['id']}", json=patch({"op": "replace", "path": "active", "value": True})
    )
    assert response.status_code in (200, 204)
    agent = await gateway.services.agents.get(created["id"])
    assert agent is not None and agent.may_sign_in and agent.disabled_reason is None
    # Stamped as a re-enable (a late Shared Signals disable issued before it is stale); a later update is not one.
    assert agent.enabled_at is not None and agent.enabled_at > agent.created_at
    await scim.patch(f"/Users/{created['id']}", json=patch({"op": "replace", "path": "displayName", "value": "B"}))
    updated = await gateway.services.agents.get(created["id"])
    assert updated is not None and updated.enabled_at == agent.enabled_at


async def test_a_put_without_active_never_reactivates(gateway: ScimGateway, scim: httpx.AsyncClient) -> None:
    created = await create(scim, "stays-off@example.org")
    await scim.patch(f"/Users/{created['id']}", json=patch({"op": "replace", "path": "active", "value": False}))
    body = user("stays-off@example.org")
    del body["active"]
    response = await scim.put(f"/Users/{created['id']}", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False


@pytest.mark.parametrize("address", ["jdoe@corp.local", "jdoe@contoso", "jdoe@lab.test"])
async def test_a_user_whose_email_has_a_directory_domain_is_provisioned(
    gateway: ScimGateway, scim: httpx.AsyncClient, address: str
) -> None:
    """RFC 7643 §4.1.2: the value SHOULD follow RFC 5321; the gateway sends no mail, so it keeps what the IdP has."""
    created = await create(scim, address)
    assert created["emails"][0]["value"] == address
    agent = await gateway.services.agents.get(created["id"])
    assert agent is not None and agent.email == address
    moved = await scim.patch(
        f"/Users/{created['id']}",
        json=patch({"op": "Replace", "path": 'emails[type eq "work"].value', "value": f"new.{address}"}),
    )
    assert moved.status_code == 204, moved.text
    assert (await scim.get(f"/Users/{created['id']}")).json()["emails"][0]["value"] == f"new.{address}"


@pytest.mark.parametrize("value", [42, True, {"address": "a@example.org"}, ["a@example.org"]])
async def test_an_email_value_that_is_not_a_string_is_refused(scim: httpx.AsyncClient, value: Any) -> None:
    response = await scim.post("/Users", json=user("typed@example.org", emails=[{"value": value, "type": "work"}]))
    assert response.status_code == 400, response.text
    assert response.json()["scimType"] == "invalidValue"
