"""Properties of /scim/v2 under random input (Hypothesis), against one live gateway per test.

1. A random PATCH document (RFC 7644 §3.5.2: any op spelling, path, value shape, IdP quirk or garbage) never
   yields a 500: every answer is a 2xx or a SCIM Error whose 4xx status is in the body.
2. Whatever state those PATCHes leave a user in, the lookup path (``scim/lookups.py``) answers a
   ``userName``/``externalId``/``id`` lookup with exactly the ListResponse the engine (scim2-server) gives.
3. SQL-injection strings in a PATCH value are stored and read back as data.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scim2_server.requests import ScimRequest

from gateway.services import open_scim
from scim.app import ScimApplication
from scim.lookups import Lookups
from tests.scim.harness import ENTERPRISE, USER, ScimGateway, patch, scim_gateway

SETTINGS = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PAYLOADS = ["' OR 1=1 --", '"; DROP TABLE agents; --', "%", "_", "\\", "a'b", "é", "ÉVA", "x y", ""]

PATHS = [
    None,
    "active",
    "userName",
    "displayName",
    "externalId",
    "nickName",
    "title",
    "name",
    "name.givenName",
    "name.familyName",
    "emails",
    'emails[type eq "work"].value',
    'emails[type eq "home"]',
    "emails[primary eq true].value",
    "phoneNumbers",
    "groups",
    "meta",
    "id",
    "password",
    "unknownAttribute",
    f"{USER}:displayName",
    f"{ENTERPRISE}:manager",
    f"{ENTERPRISE}:manager.value",
    f"{ENTERPRISE}:employeeNumber",
    f"{ENTERPRISE}:department",
    "urn:unknown:schema:x",
    "emails[",
    "name..givenName",
    'emails[value co "x"',
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from(["True", "False", "true", "false", "1", "0"])
    | st.sampled_from(PAYLOADS)
    | st.text(max_size=12)
    | st.integers(min_value=-(2**63), max_value=2**63)
)
MULTI = st.lists(
    st.fixed_dictionaries(
        {"value": st.sampled_from(["a@example.org", "b@example.org", "+1 555", "not an email", ""])},
        optional={"type": st.sampled_from(["work", "home", "Work", "other"]), "primary": st.booleans()},
    ),
    max_size=3,
)
NAMED = st.dictionaries(st.sampled_from([p for p in PATHS if p]), SCALARS | MULTI, max_size=4)
VALUES = SCALARS | MULTI | NAMED | st.fixed_dictionaries({"value": SCALARS})
OPERATION = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "replace", "remove", "Add", "Replace", "Remove", "ADD", "delete", ""])},
    optional={"path": st.sampled_from(PATHS).filter(lambda p: p is not None), "value": VALUES},
)
DOCUMENTS = st.lists(OPERATION, min_size=1, max_size=4).map(lambda ops: patch(*ops)) | st.fixed_dictionaries(
    {"schemas": st.sampled_from([["urn:ietf:params:scim:api:messages:2.0:PatchOp"], [], ["x"]])},
    optional={"Operations": st.lists(st.dictionaries(st.text(max_size=6), VALUES, max_size=3), max_size=2)},
)


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[ScimGateway]:
    async with scim_gateway() as running:
        yield running


async def _token(gateway: ScimGateway) -> str:
    return await gateway.token(f"okta-{len(gateway.clients)}")


async def _create(scim: httpx.AsyncClient, number: int, manager: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": [USER, ENTERPRISE],
        "userName": f"Agent.{number}@Example.org",
        "externalId": f"ext-{number}",
        "name": {"givenName": "A", "familyName": "Agent"},
        "emails": [{"value": f"agent.{number}@example.org", "type": "work", "primary": True}],
        "active": True,
    }
    if manager is not None:
        body[ENTERPRISE] = {"manager": {"value": manager}, "employeeNumber": str(number)}
    response = await scim.post("/Users", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _scim_error(response: httpx.Response) -> bool:
    body = response.json()
    return (
        body.get("schemas") == ["urn:ietf:params:scim:api:messages:2.0:Error"]
        and body.get("status") == str(response.status_code)
        and bool(body.get("detail"))
    )


async def _assert_lookups_match_the_engine(
    gateway: ScimGateway, engine: ScimApplication, token: str, user: dict[str, Any]
) -> None:
    assert gateway.services.scim is not None
    lookups = Lookups(gateway.services.scim.storage, gateway.scim_url)  # type: ignore[arg-type]
    filters = [f'id eq "{user["id"]}"', f"userName eq {json.dumps(user['userName'].upper())}"]
    if user.get("externalId"):
        filters.append(f"externalId eq {json.dumps(user['externalId'])}")
    for text in filters:
        for query in ({"filter": text}, {"filter": text, "startIndex": "1", "count": "5"}):
            request = ScimRequest(
                method="GET",
                base_url=gateway.scim_url,
                path="/Users",
                query=query,
                headers=[("Authorization", f"Bearer {token}")],
            )
            fast = await lookups.answer(request)
            assert fast is not None, f"the lookup path did not take {query}"
            reference = await engine.serve(request)
            assert int(reference.status) == 200, reference.body
            assert json.loads(json.dumps(fast.body)) == json.loads(json.dumps(reference.body)), text


@SETTINGS
@given(documents=st.lists(DOCUMENTS, min_size=1, max_size=3))
@pytest.mark.timeout(600)
async def test_random_patches_never_500_and_lookups_always_equal_the_engines_answer(
    gateway: ScimGateway, documents: list[dict[str, Any]]
) -> None:
    token = await _token(gateway)
    scim = await gateway.client(f"c{len(gateway.clients)}", token=token)
    engine = open_scim(gateway.services, fast_lookups=False)
    number = len(gateway.clients)
    manager = await _create(scim, number * 10 + 1, None)
    user = await _create(scim, number * 10 + 2, manager["id"])
    group = await scim.post(
        "/Groups",
        json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": f"G {number}",
            "members": [{"value": user["id"]}],
        },
    )
    assert group.status_code == 201, group.text

    for document in documents:
        response = await scim.patch(f"/Users/{user['id']}", json=document)
        assert response.status_code < 500, (document, response.text)
        assert response.status_code < 300 or _scim_error(response), (document, response.text)

    current = await scim.get(f"/Users/{user['id']}")
    assert current.status_code == 200, current.text
    await _assert_lookups_match_the_engine(gateway, engine, token, current.json())
    await _assert_lookups_match_the_engine(gateway, engine, token, manager)


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_injection_strings_in_a_patch_are_stored_and_read_back_as_data(
    gateway: ScimGateway, payload: str
) -> None:
    scim = await gateway.client()
    user = await _create(scim, 1, None)
    response = await scim.patch(
        f"/Users/{user['id']}", json=patch({"op": "replace", "path": "displayName", "value": payload or "-"})
    )
    assert response.status_code in (200, 204), response.text
    found = await scim.get("/Users", params={"filter": f"displayName eq {json.dumps(payload or '-')}"})
    assert [r["id"] for r in found.json()["Resources"]] == [user["id"]]
    assert (await scim.get("/Users")).json()["totalResults"] == 1  # the table and its rows survived
