"""Concurrent writes to one resource, on SQLite and PostgreSQL: without If-Match every change applies (RFC 7644
§3.14 keeps 412 for a failed If-Match), with it the client's precondition still holds.

A write from another replica is played by writing through the storage itself between the request's read and
its write, which is what another process committing at that moment looks like to this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from scim2_models import Resource, ResourceType, User

from scim.handler import ATTEMPTS
from scim.storage import DatabaseStorage
from tests.scim.harness import GROUP, USER, ScimGateway, patch, scim_gateway


@pytest_asyncio.fixture
async def gateway(database_url: str) -> AsyncIterator[ScimGateway]:
    async with scim_gateway(database_url) as running:
        yield running


async def new_user(scim: httpx.AsyncClient, name: str) -> str:
    response = await scim.post("/Users", json={"schemas": [USER], "userName": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def storage_of(gateway: ScimGateway) -> DatabaseStorage:
    assert gateway.services.scim is not None
    storage = gateway.services.scim.storage
    assert isinstance(storage, DatabaseStorage)
    return storage


def another_replica_writes_after_each_read(
    monkeypatch: pytest.MonkeyPatch, storage: DatabaseStorage, user_id: str, times: int
) -> list[str]:
    """After each of the next ``times`` reads of the user, another replica sets its title; returns the titles."""
    original = storage.get
    written: list[str] = []
    writing = False

    async def read_then_lose_the_race(resource_type: ResourceType, resource_id: str, **kwargs: Any) -> Resource[Any]:
        nonlocal writing
        found = await original(resource_type, resource_id, **kwargs)
        if resource_id == user_id and len(written) < times and not writing:
            theirs = found.model_copy(deep=True)
            assert isinstance(theirs, User)
            theirs.title = f"set by replica B ({len(written) + 1})"
            writing = True
            try:
                await storage.update(resource_type, theirs)
            finally:
                writing = False
            written.append(theirs.title)
        return found

    monkeypatch.setattr(storage, "get", read_then_lose_the_race)
    return written


async def test_concurrent_member_adds_without_if_match_all_apply(gateway: ScimGateway) -> None:
    """Okta Group Push and Entra send a group's membership changes in parallel, without If-Match."""
    scim = await gateway.client("okta")
    users = [await new_user(scim, f"agent{i}") for i in range(8)]
    created = await scim.post("/Groups", json={"schemas": [GROUP], "displayName": "chat", "members": []})
    group = created.json()["id"]
    add = [patch({"op": "add", "path": "members", "value": [{"value": user}]}) for user in users]
    responses = await asyncio.gather(*[scim.patch(f"/Groups/{group}", json=body) for body in add])
    assert [r.status_code for r in responses] == [204] * len(users), [r.text for r in responses]
    members = {m["value"] for m in (await scim.get(f"/Groups/{group}")).json()["members"]}
    assert members == set(users)


async def test_concurrent_user_patches_without_if_match_all_apply(gateway: ScimGateway) -> None:
    scim = await gateway.client("entra")
    user = await new_user(scim, "ana")
    attributes = ["title", "displayName", "nickName", "locale", "timezone"]
    responses = await asyncio.gather(
        *[
            scim.patch(f"/Users/{user}", json=patch({"op": "Replace", "path": name, "value": f"v-{name}"}))
            for name in attributes
        ]
    )
    assert [r.status_code for r in responses] == [204] * len(attributes), [r.text for r in responses]
    stored = (await scim.get(f"/Users/{user}")).json()
    assert {name: stored.get(name) for name in attributes} == {name: f"v-{name}" for name in attributes}


async def test_a_patch_racing_another_replica_is_applied_on_top_of_its_write(
    gateway: ScimGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    scim = await gateway.client("entra")
    user = await new_user(scim, "raced")
    written = another_replica_writes_after_each_read(monkeypatch, storage_of(gateway), user, times=1)
    response = await scim.patch(f"/Users/{user}", json=patch({"op": "replace", "path": "displayName", "value": "A"}))
    assert response.status_code == 204, response.text
    stored = (await scim.get(f"/Users/{user}")).json()
    assert (stored["displayName"], stored["title"]) == ("A", written[0])


async def test_if_match_still_answers_412_when_another_replica_wrote_after_the_read(
    gateway: ScimGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    scim = await gateway.client("entra")
    user = await new_user(scim, "guarded")
    etag = (await scim.get(f"/Users/{user}")).headers["etag"]
    written = another_replica_writes_after_each_read(monkeypatch, storage_of(gateway), user, times=1)
    response = await scim.patch(
        f"/Users/{user}",
        json=patch({"op": "replace", "path": "displayName", "value": "A"}),
        headers={"If-Match": etag},
    )
    assert response.status_code == 412, response.text
    stored = (await scim.get(f"/Users/{user}")).json()
    assert "displayName" not in stored and stored["title"] == written[0]


async def test_delete_without_if_match_deprovisions_although_another_replica_wrote_the_user_meanwhile(
    gateway: ScimGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entra's hard delete carries no If-Match; a 412 here would leave the agent active until its next cycle."""
    scim = await gateway.client("entra")
    user = await new_user(scim, "leaver")
    written = another_replica_writes_after_each_read(monkeypatch, storage_of(gateway), user, times=1)
    response = await scim.delete(f"/Users/{user}")
    assert response.status_code == 204, response.text
    assert written and await gateway.services.agents.get(user) is None
    assert (await scim.get(f"/Users/{user}")).status_code == 404


async def test_a_patch_that_loses_every_race_is_a_503_to_retry_not_a_412(
    gateway: ScimGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    scim = await gateway.client("entra")
    user = await new_user(scim, "contended")
    written = another_replica_writes_after_each_read(monkeypatch, storage_of(gateway), user, times=ATTEMPTS)
    response = await scim.patch(f"/Users/{user}", json=patch({"op": "replace", "path": "displayName", "value": "A"}))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert "send it again" in response.json()["detail"]
    assert len(written) == ATTEMPTS
