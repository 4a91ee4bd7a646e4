"""Research item 7 (RFC 7644 §3.6): DELETE twice, GET, re-create the same userName → 204, 404, 404, 201, and the
access log holds each effect once: one disable, one ending of the sessions, one deprovisioning run, and each SCIM
write recorded once as what it was (the repeated DELETE as refused)."""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.sessions.base import SessionData
from tests.scim.harness import USER, ScimGateway, scim_gateway


async def _provisioned_with_a_session(gateway: ScimGateway, scim: httpx.AsyncClient, user_name: str) -> str:
    created = await scim.post("/Users", json={"schemas": [USER], "userName": user_name})
    assert created.status_code == 201, created.text
    agent_id: str = created.json()["id"]
    data = SessionData(agent_id, user_name, "https://idp.example", f"{user_name}-sub")
    await gateway.services.sessions.create(data, time.time())
    return agent_id


async def _effects(gateway: ScimGateway, mark: int, agent_id: str) -> list[str]:
    return [r.kind for r in await gateway.records_since(mark) if r.agent_id == agent_id and r.kind != "scim"]


async def test_delete_twice_get_and_rehire_answer_204_404_404_201_and_record_each_effect_once() -> None:
    async with scim_gateway() as gateway:
        scim = await gateway.client()
        agent_id = await _provisioned_with_a_session(gateway, scim, "leaver@example.org")
        mark = await gateway.audit_mark()

        statuses = [
            (await scim.delete(f"/Users/{agent_id}")).status_code,
            (await scim.delete(f"/Users/{agent_id}")).status_code,
            (await scim.get(f"/Users/{agent_id}")).status_code,
        ]
        rehired = await scim.post("/Users", json={"schemas": [USER], "userName": "leaver@example.org"})
        assert [*statuses, rehired.status_code] == [204, 404, 404, 201]
        assert rehired.json()["id"] != agent_id

        writes = [(r.method, r.status, r.decision) for r in await gateway.records_since(mark, "scim")]
        assert writes == [("DELETE", 204, "applied"), ("DELETE", 404, "refused"), ("POST", 201, "applied")]
        assert await _effects(gateway, mark, agent_id) == ["deprovision", "sessions_revoked"]
        assert len(await gateway.services.pipeline.runs_of_agent(agent_id)) == 1
        assert await gateway.services.sessions.sessions_of(agent_id, time.time()) == []


async def test_two_deletes_at_once_are_one_204_and_one_404_with_each_effect_recorded_once() -> None:
    async with scim_gateway() as gateway:
        scim = await gateway.client()
        agent_id = await _provisioned_with_a_session(gateway, scim, "racer@example.org")
        mark = await gateway.audit_mark()

        answers = await asyncio.gather(scim.delete(f"/Users/{agent_id}"), scim.delete(f"/Users/{agent_id}"))
        assert sorted(answer.status_code for answer in answers) == [204, 404]
        assert await _effects(gateway, mark, agent_id) == ["deprovision", "sessions_revoked"]
        assert len(await gateway.services.pipeline.runs_of_agent(agent_id)) == 1
