"""Bearer tokens per SCIM client: missing, wrong or revoked tokens get a 401 SCIM Error; writes are audited."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from gateway.timeutil import utcnow
from tests.scim.harness import USER, ScimGateway, scim_gateway


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[ScimGateway]:
    async with scim_gateway() as running:
        yield running


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    body = response.json()
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert body["status"] == "401"
    assert body["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization",
    [None, "non-token", "Bearer", "Bearer wrong-token", "Basic b2t0YTpzZWNyZXQ=", "bearer cgscim_guessed"],
)
async def test_requests_without_a_valid_token_are_401_scim_errors(
    gateway: ScimGateway, authorization: str | None
) -> None:
    await gateway.token("okta")
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=gateway.scim_url) as client:
        assert_401(await client.get("/Users", headers=headers))
        assert_401(await client.post("/Users", headers=headers, json={"schemas": [USER], "userName": "x"}))
    assert await gateway.services.agents.find("x") is None


async def test_a_revoked_token_is_refused(gateway: ScimGateway) -> None:
    token = await gateway.token("entra")
    client = await gateway.client(token=token)
    assert (await client.get("/Users")).status_code == 200
    await gateway.services.scim_tokens.revoke("entra", utcnow())
    assert_401(await client.get("/Users"))


async def test_the_service_provider_config_is_public_and_announces_bearer_tokens(gateway: ScimGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.scim_url) as client:
        response = await client.get("/ServiceProviderConfig")
    assert response.status_code == 200
    config = response.json()
    assert config["patch"]["supported"] is True
    assert config["etag"]["supported"] is True
    assert config["bulk"]["supported"] is False
    assert config["authenticationSchemes"][0]["type"] == "oauthbearertoken"


async def test_tokens_are_stored_hashed(gateway: ScimGateway) -> None:
    token = await gateway.token("hashed")
    from sqlalchemy import text

    async with gateway.services.database.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM scim_tokens"))).all()
    assert token not in repr(rows)


async def test_every_write_is_in_the_access_log_with_its_client_refused_or_not(gateway: ScimGateway) -> None:
    client = await gateway.client("okta-prod")
    mark = await gateway.audit_mark()
    created = await client.post("/Users", json={"schemas": [USER], "userName": "logged@example.org"})
    duplicate = await client.post("/Users", json={"schemas": [USER], "userName": "logged@example.org"})
    async with httpx.AsyncClient(base_url=gateway.scim_url) as anonymous:
        await anonymous.delete(f"/Users/{created.json()['id']}")
    await client.get("/Users")
    records = await gateway.records_since(mark, "scim")
    assert [(r.method, r.status, r.actor) for r in records] == [
        ("POST", 201, "scim:okta-prod"),
        ("POST", 409, "scim:okta-prod"),
        ("DELETE", 401, "scim:unauthenticated"),
    ]
    assert records[0].agent_id == created.json()["id"]
    assert records[1].decision == "refused" and records[1].reason
    assert duplicate.status_code == 409
