"""Redis SIGKILLed and restarted on the same port under two gateway replicas (issue 8, item 3).

Redis runs as operators run it, with ``appendonly yes``: a restart reloads what Redis acknowledged, so the
question is real whether a revoked session comes back (without persistence a restart forgets every session,
which is fail-closed by itself; tests/integration/test_gateway_fail_closed.py covers that case). While Redis is
down every replica answers 503 and nothing reaches a console; once it is back they serve again without a restart;
a session revoked before the kill stays revoked. An agent deprovisioned (admin API) or deactivated (SCIM) during
the outage is disabled at once and the caller gets a 503 that says so; the replica keeps retrying the kill, so the
agent's sessions end as soon as Redis is back (at most one retry interval later) and stay ended. Before the fix
in gateway/deprovision/kill.py nothing retried it, and the session came back with Redis for good.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.deprovision.kill import RETRY_MAX_DELAY
from tests.components.echo_gateway import eventually
from tests.components.gateway import GatewayStack
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer
from tests.faults.conftest import (
    DATABASE,
    JSON,
    admin_post,
    no_traceback,
    refused_with_the_agent_disabled,
    sign_in,
    status_of,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.oidc, pytest.mark.timeout(90)]

HTML = {"Accept": "text/html"}
REPLICAS = (0, 1)


async def _statuses(client: httpx.AsyncClient, stack: GatewayStack, marker: str) -> dict[int, int]:
    return {r: (await client.get(f"{stack.url(r)}/chat/?{marker}", headers=JSON)).status_code for r in REPLICAS}


async def _all_ready(stack: GatewayStack) -> bool:
    return all([await status_of(stack, "/.channelgate/readyz", r) == 200 for r in REPLICAS])


def _cookie(client: httpx.AsyncClient) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in client.cookies.items())}


async def test_redis_down_is_a_503_on_every_replica_and_service_resumes_by_itself_when_it_is_back(
    stack: GatewayStack, fault_redis: RedisServer, fault_postgres: PostgresServer
) -> None:
    agent = await sign_in(stack, "agent01")
    try:
        assert await _statuses(agent, stack, "before") == {0: 200, 1: 200}
        pids = [stack.replica_pid(r) for r in REPLICAS]

        fault_redis.kill()

        for replica in REPLICAS:
            refused = await agent.get(f"{stack.url(replica)}/chat/?during", headers=JSON)
            assert refused.status_code == 503, refused.text[:300]
            no_traceback(refused)
            assert refused.json()["error"] == "session_store_unavailable"
            assert refused.headers["retry-after"]
            page = await agent.get(f"{stack.url(replica)}/chat/?during_page", headers=HTML)
            assert page.status_code == 503 and "Traceback" not in page.text
            assert await status_of(stack, "/.channelgate/readyz", replica) == 503

        await asyncio.to_thread(fault_redis.start)

        await eventually(lambda: _all_ready(stack), timeout=10)
        # The same session, on both replicas, without restarting either: the pool reconnected by itself.
        assert await _statuses(agent, stack, "after") == {0: 200, 1: 200}
        assert [stack.replica_pid(r) for r in REPLICAS] == pids
    finally:
        await agent.aclose()
    # Nothing passed while Redis was down: every request of the outage was refused before any console.
    during = fault_postgres.execute(
        "SELECT status, coalesce(decision, '-') FROM access_log WHERE path LIKE '/chat/?during%' ORDER BY seq",
        DATABASE,
    ).splitlines()
    assert during == ["503|-"] * 4


async def test_a_session_revoked_before_redis_is_killed_stays_revoked_after_the_restart(
    stack: GatewayStack, fault_redis: RedisServer
) -> None:
    logged_out = await sign_in(stack, "agent02")
    kept = await sign_in(stack, "agent02")
    deprovisioned = await sign_in(stack, "agent03")
    try:
        logged_out_cookie, deprovisioned_cookie = _cookie(logged_out), _cookie(deprovisioned)
        assert (await admin_post(stack, "/agents/agent03/deprovision", {"reason": "left"})).status_code == 200
        signed_out = await logged_out.post(stack.url(0) + "/.channelgate/logout", follow_redirects=False)
        assert signed_out.status_code == 303

        fault_redis.kill()  # at once: the deletions must already be in the append-only file
        await asyncio.to_thread(fault_redis.start)
        await eventually(lambda: _all_ready(stack), timeout=10)

        async with httpx.AsyncClient() as client:
            for replica in REPLICAS:
                for cookie in (logged_out_cookie, deprovisioned_cookie):
                    again = await client.get(f"{stack.url(replica)}/chat/", headers={**JSON, **cookie})
                    assert again.status_code == 401, (replica, again.text[:300])
        # The append-only file is really in use: agent02's other session came back with Redis.
        assert await _statuses(kept, stack, "kept") == {0: 200, 1: 200}
    finally:
        for client in (logged_out, kept, deprovisioned):
            await client.aclose()


async def _after_restart(redis: RedisServer, agent: httpx.AsyncClient, stack: GatewayStack) -> list[float]:
    """Start Redis again and follow ``agent``'s session on both replicas for a while: the times (seconds after
    Redis answered) at which it was still served, after checking it is refused for good at the end."""
    await asyncio.to_thread(redis.start)
    loop = asyncio.get_running_loop()
    back = loop.time()
    served: list[float] = []
    while loop.time() - back < RETRY_MAX_DELAY + 1.0:
        statuses = await _statuses(agent, stack, "recovering")
        served += [loop.time() - back for status in statuses.values() if status == 200]
        assert set(statuses.values()) <= {200, 401}, statuses
    assert await _statuses(agent, stack, "later") == {0: 401, 1: 401}
    return served


async def test_deprovisioning_while_redis_is_down_answers_503_and_the_kill_lands_as_soon_as_redis_is_back(
    stack: GatewayStack, fault_redis: RedisServer, fault_postgres: PostgresServer
) -> None:
    agent = await sign_in(stack, "agent04")
    try:
        assert await _statuses(agent, stack, "before") == {0: 200, 1: 200}
        fault_redis.kill()

        refused = await admin_post(stack, "/agents/agent04/deprovision", {"reason": "left"})

        refused_with_the_agent_disabled(refused)
        # The replica that took it keeps ending the sessions until Redis answers, and meanwhile every replica that
        # saw Redis fail checks each session's agent in the database: the revived session is never served.
        served = await _after_restart(fault_redis, agent, stack)
        assert served == [], served
    finally:
        await agent.aclose()
    # The kill that landed late is recorded, with the attempts it took (after waiting for the replicas' acks).
    revoked = await eventually(
        lambda: asyncio.to_thread(
            fault_postgres.execute,
            "SELECT detail FROM access_log WHERE kind = 'sessions_revoked' AND agent_name = 'agent04'",
            DATABASE,
        ),
        timeout=5,
    )
    # 1 session when the retry ended it, 0 when a replica's recovery check had already deleted it on a request.
    assert '"attempts"' in revoked and ('"sessions": 1' in revoked or '"sessions": 0' in revoked), revoked
    confirmed = await admin_post(stack, "/agents/agent04/deprovision", {"reason": "left"})
    assert confirmed.status_code == 200 and confirmed.json()["active"] is False, confirmed.text


async def test_a_scim_deactivation_while_redis_is_down_is_refused_and_its_kill_lands_once_redis_is_back(
    stack: GatewayStack, fault_redis: RedisServer
) -> None:
    token = (await asyncio.to_thread(stack.cli, "scim-tokens", "create", "entra")).stdout.strip()
    agent = await sign_in(stack, "agent05")
    scim = httpx.AsyncClient(
        base_url=stack.url(1) + "/scim/v2",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
    )
    try:
        found = (await scim.get("/Users", params={"filter": 'userName eq "agent05"'})).json()
        agent_id = found["Resources"][0]["id"]
        fault_redis.kill()

        disable = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": False}],
        }
        refused = await scim.patch(f"/Users/{agent_id}", json=disable)

        assert refused.status_code == 503, refused.text
        assert "Traceback" not in refused.text
        assert refused.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
        served = await _after_restart(fault_redis, agent, stack)
        assert served == [], served
        assert (await scim.get(f"/Users/{agent_id}")).json()["active"] is False
    finally:
        await agent.aclose()
        await scim.aclose()
