"""What the database cannot hold or bind, answered alike on SQLite and PostgreSQL: a value too long for its column
or holding U+0000 is the client's 400 invalidValue naming the attribute (RFC 7644 §3.12), a startIndex past any
row an empty page (RFC 7644 §3.4.2.4), and a failing database a 503 that never names it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.errors import StorageError
from gateway.storage.database import safe_url
from tests.scim.harness import ENTERPRISE, GROUP, USER, ScimGateway, patch, scim_gateway

SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
HUGE = "99999999999999999999"


@pytest_asyncio.fixture
async def gateway(database_url: str) -> AsyncIterator[ScimGateway]:
    async with scim_gateway(database_url) as running:
        yield running


@pytest_asyncio.fixture
async def scim(gateway: ScimGateway) -> httpx.AsyncClient:
    return await gateway.client("entra")


def user(name: str, **extra: Any) -> dict[str, Any]:
    return {"schemas": [USER, ENTERPRISE], "userName": name, **extra}


def group(name: str, **extra: Any) -> dict[str, Any]:
    return {"schemas": [GROUP], "displayName": name, **extra}


async def created(scim: httpx.AsyncClient, path: str, body: dict[str, Any]) -> str:
    response = await scim.post(path, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/Users", user("u" * 257), ["userName", "256"]),
        ("/Users", user("dn", displayName="d" * 300), ["displayName", "256"]),
        ("/Users", user("ext", externalId="e" * 300), ["externalId", "256"]),
        ("/Users", user("mail", emails=[{"value": "m" * 310 + "@example.org", "type": "work"}]), ["emails", "320"]),
        ("/Users", user("emp", **{ENTERPRISE: {"employeeNumber": "1" * 65}}), ["employeeNumber", "64"]),
        ("/Users", user("boss", **{ENTERPRISE: {"manager": {"value": "b" * 300}}}), ["manager", "256"]),
        ("/Users", user("nul\u0000byte"), ["userName", "U+0000"]),
        ("/Users", user("nul-dn", displayName="a\u0000b"), ["displayName", "U+0000"]),
        ("/Groups", group("g" * 257), ["displayName", "256"]),
        ("/Groups", group("ext", externalId="e" * 300), ["externalId", "256"]),
        ("/Groups", group("nul\u0000group"), ["displayName", "U+0000"]),
        ("/Groups", group("nul-member", members=[{"value": "a\u0000b"}]), ["members", "no user has the id"]),
    ],
    ids=[
        "long-userName",
        "long-displayName",
        "long-externalId",
        "long-email",
        "long-employeeNumber",
        "long-manager",
        "NUL-in-userName",
        "NUL-in-displayName",
        "long-group-displayName",
        "long-group-externalId",
        "NUL-in-group-displayName",
        "NUL-in-member-id",
    ],
)
async def test_a_value_the_database_cannot_hold_is_a_400_naming_the_attribute_and_its_limit(
    scim: httpx.AsyncClient, path: str, body: dict[str, Any], named: list[str]
) -> None:
    """A 5xx would make Entra and Okta retry the same doomed request for ever."""
    response = await scim.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["scimType"] == "invalidValue"
    assert all(word in error["detail"] for word in named), error["detail"]
    assert (await scim.get(path, params={"count": "10"})).json()["totalResults"] == 0


async def test_a_change_to_a_value_the_database_cannot_hold_is_a_400_and_changes_nothing(
    scim: httpx.AsyncClient,
) -> None:
    user_id = await created(scim, "/Users", user("kept", displayName="Kept"))
    group_id = await created(scim, "/Groups", group("kept"))
    too_long = await scim.patch(
        f"/Users/{user_id}", json=patch({"op": "replace", "path": "displayName", "value": "d" * 257})
    )
    renamed = await scim.put(f"/Groups/{group_id}", json=group("g\u0000"))
    assert (too_long.status_code, renamed.status_code) == (400, 400), (too_long.text, renamed.text)
    assert (await scim.get(f"/Users/{user_id}")).json()["displayName"] == "Kept"
    assert (await scim.get(f"/Groups/{group_id}")).json()["displayName"] == "kept"


async def test_values_at_the_column_limits_are_stored(scim: httpx.AsyncClient) -> None:
    body = user(
        "u" * 256,
        displayName="d" * 256,
        externalId="e" * 256,
        emails=[{"value": "m" * 308 + "@example.org", "type": "work"}],
        **{ENTERPRISE: {"employeeNumber": "1" * 64}},
    )
    user_id = await created(scim, "/Users", body)
    await created(scim, "/Groups", group("g" * 256, externalId="e" * 256, members=[{"value": user_id}]))


@pytest.mark.parametrize(
    "path",
    ["/Users/a%00b", "/Groups/a%00b", "/Users/" + "i" * 300, "/Groups/" + "i" * 300],
    ids=["user-NUL", "group-NUL", "user-long", "group-long"],
)
async def test_an_id_holding_u0000_or_too_long_names_no_resource(scim: httpx.AsyncClient, path: str) -> None:
    """Not a 503: the database cannot compare the first, and the access log's record cannot hold either."""
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        body = patch({"op": "replace", "path": "displayName", "value": "x"}) if method == "PATCH" else None
        response = await scim.request(method, path, json=user("x") if method == "PUT" else body)
        assert response.status_code == 404, (method, response.text)


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    [
        ("GET", "/Users", {"startIndex": HUGE}, None),
        ("GET", "/Groups", {"startIndex": HUGE}, None),
        ("GET", "/Users", {"filter": 'userName eq "someone"', "startIndex": HUGE}, None),
        ("POST", "/Users/.search", None, {"schemas": [SEARCH], "startIndex": 10**20}),
        ("POST", "/Groups/.search", None, {"schemas": [SEARCH], "startIndex": 10**20}),
    ],
    ids=["users", "groups", "users-lookup", "users-search", "groups-search"],
)
async def test_a_start_index_past_every_row_is_an_empty_page(
    scim: httpx.AsyncClient, method: str, path: str, params: dict[str, str] | None, body: Any
) -> None:
    await created(scim, "/Users", user("someone"))
    await created(scim, "/Groups", group("someone"))
    response = await scim.request(method, path, params=params, json=body)
    assert response.status_code == 200, response.text
    page = response.json()
    assert (page["totalResults"], page.get("Resources", [])) == (1, [])


async def test_a_start_index_written_as_a_huge_float_is_a_400_invalid_value(scim: httpx.AsyncClient) -> None:
    response = await scim.post("/Users/.search", json={"schemas": [SEARCH], "startIndex": 1e20})
    assert response.status_code == 400, response.text
    assert response.json()["scimType"] == "invalidValue"


async def test_a_failing_database_is_a_503_with_retry_after_that_never_names_the_database(
    gateway: ScimGateway, scim: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = gateway.services.database.engine
    assert engine.url.database is not None
    assert gateway.services.scim is not None

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StorageError(f"database read failed on {safe_url(engine)}", detail="ConnectionRefusedError")

    monkeypatch.setattr(gateway.services.scim.storage, "search", unreachable)
    response = await scim.get("/Groups")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    detail = response.json()["detail"]
    assert "retry later" in detail
    assert engine.url.database not in detail and engine.dialect.name not in detail and "127.0.0.1" not in detail


#: 100,000 levels of nesting: json's decoder recurses once per level.
DEEP = b"[" * 100_000 + b"]" * 100_000


async def test_a_body_nested_too_deeply_is_a_400_invalid_syntax_never_a_500(scim: httpx.AsyncClient) -> None:
    answer = await scim.post("/Users", content=DEEP)
    assert answer.status_code == 400 and answer.json()["scimType"] == "invalidSyntax", answer.text


async def test_an_unauthenticated_body_is_refused_with_a_401_before_it_is_read_as_json(
    gateway: ScimGateway,
) -> None:
    # The token is checked first: a body that would fail to parse (or take a megabyte of parsing) gets the 401.
    async with httpx.AsyncClient(base_url=gateway.scim_url, timeout=10.0) as anonymous:
        answer = await anonymous.post("/Users", content=DEEP, headers={"Content-Type": "application/scim+json"})
    assert answer.status_code == 401, answer.text
