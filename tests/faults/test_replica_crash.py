"""A gateway replica SIGKILLed under load, with two replicas on Redis and PostgreSQL (issue 8, item 3).

Clients hammer both replicas; one is killed. Every request to the survivor succeeds, before and after the kill.
A deprovisioning sent to the survivor afterwards completes: the dead replica, still counted live by its last
heartbeat, cannot acknowledge, and the kill stops waiting for it after ``revocation_ack_timeout_seconds``
(2 s in the test configuration), naming it as missing.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.ops import public_replica_id
from tests.components.gateway import GatewayStack
from tests.faults.conftest import JSON, admin_post, sign_in, status_of

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.oidc, pytest.mark.timeout(90)]

ACK_TIMEOUT = 2.0  # [sessions] revocation_ack_timeout_seconds of tests.components.gateway.config_toml
SURVIVOR, VICTIM = 0, 1


def _replica_id(stack: GatewayStack, replica: int) -> str:
    """The random part of the replica's id (``public_replica_id``: readyz names no host)."""
    replica_id: str = httpx.get(stack.url(replica) + "/.channelgate/readyz").json()["replica"]
    return replica_id


Outcome = tuple[float, int | str]


async def _hammer(
    client: httpx.AsyncClient, stack: GatewayStack, replica: int, seen: list[Outcome], stop: asyncio.Event
) -> None:
    """Requests to one replica, one after another, until ``stop``: (time, status or error name) of each."""
    number = 0
    while not stop.is_set():
        try:
            response = await client.get(f"{stack.url(replica)}/chat/?crashload_{replica}_{number}", headers=JSON)
            seen.append((time.monotonic(), response.status_code))
        except httpx.TransportError as exc:
            seen.append((time.monotonic(), type(exc).__name__))
            await asyncio.sleep(0.05)
        number += 1


async def test_a_replica_killed_under_load_leaves_every_request_to_the_other_one_served(stack: GatewayStack) -> None:
    agents = [await sign_in(stack, "agent08"), await sign_in(stack, "agent09")]
    seen: dict[int, list[Outcome]] = {SURVIVOR: [], VICTIM: []}
    stop = asyncio.Event()
    try:
        # Four clients: each agent on each replica, two of them twice over.
        hammers = [
            asyncio.create_task(_hammer(agent, stack, replica, seen[replica], stop))
            for agent in agents
            for replica in (SURVIVOR, VICTIM, SURVIVOR)
        ]
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        stack.kill_replica(VICTIM)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*hammers)
    finally:
        stop.set()
        for agent in agents:
            await agent.aclose()

    survivor = [outcome for _, outcome in seen[SURVIVOR]]
    after_kill = [outcome for moment, outcome in seen[SURVIVOR] if moment > killed_at]
    assert len(after_kill) > 20, seen[SURVIVOR][-5:]
    assert set(survivor) == {200}, [outcome for outcome in survivor if outcome != 200][:10]
    victim_before = [outcome for moment, outcome in seen[VICTIM] if moment < killed_at]
    victim_after = [outcome for moment, outcome in seen[VICTIM] if moment > killed_at + 0.2]
    assert victim_before and set(victim_before) == {200}
    assert victim_after and 200 not in victim_after  # it is really gone: connections refused
    assert await status_of(stack, "/.channelgate/readyz", SURVIVOR) == 200


async def test_a_deprovisioning_after_a_replica_crash_completes_without_the_dead_replicas_acknowledgement(
    stack: GatewayStack,
) -> None:
    survivor_id, victim_id = _replica_id(stack, SURVIVOR), _replica_id(stack, VICTIM)
    agent = await sign_in(stack, "agent10")
    try:
        stack.kill_replica(VICTIM)
        assert (await agent.get(stack.url(SURVIVOR) + "/chat/", headers=JSON)).status_code == 200

        started = time.monotonic()
        done = await admin_post(stack, "/agents/agent10/deprovision", {"reason": "left"}, replica=SURVIVOR)
        elapsed = time.monotonic() - started

        assert done.status_code == 200, done.text
        report = done.json()
        assert report["active"] is False and report["sessions_revoked"] == 1
        # Missing: the replica just killed (and one killed by an earlier test, its heartbeat still fresh).
        missing = [public_replica_id(replica_id) for replica_id in report["replicas_missing"]]
        assert victim_id in missing and survivor_id not in missing
        assert [public_replica_id(replica_id) for replica_id in report["replicas_confirmed"]] == [survivor_id]
        assert ACK_TIMEOUT - 0.1 <= elapsed < ACK_TIMEOUT + 1.5
        assert (await agent.get(stack.url(SURVIVOR) + "/chat/", headers=JSON)).status_code == 401
    finally:
        await agent.aclose()
