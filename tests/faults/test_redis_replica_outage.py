"""``[sessions.redis] wait_for_replicas = 1`` with the Redis replica cut, under two gateway replicas.

Redis replicates asynchronously: a kill the primary applied but no replica holds yet is lost if the primary fails
over before it replicates, and the agent's sessions are valid again on the promoted replica. With
``wait_for_replicas`` a deprovisioning counts its kill done only once a replica confirmed it (Redis ``WAIT``).
Cut the replica and deprovision: the caller is told the sessions were not confirmed ended (503) although the
agent is disabled and the primary refuses the sessions at once; the replica that took the call keeps retrying the
kill, and when the Redis replica is back the kill is confirmed, recorded with its attempts, and the replica holds
it (tests/integration/test_session_store_replication.py proves the store's own part of this).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis

from gateway.deprovision.kill import RETRY_MAX_DELAY
from gateway.sessions.redis_scripts import SESSION_PREFIX
from tests.components.echo_gateway import eventually
from tests.components.gateway import GatewayStack
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer, until_replicated
from tests.faults.conftest import (
    JSON,
    admin_post,
    refused_with_the_agent_disabled,
    running_stack,
    sign_in,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.oidc, pytest.mark.timeout(120)]

DATABASE = "channelgate_faults_replicated"
REPLICAS = (0, 1)
WAITING = """
[sessions.redis]
wait_for_replicas = 1
wait_for_replicas_timeout_seconds = 0.3
"""


@pytest.fixture(scope="module")
def redis_pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary (append-only, as operators run it) and a replica of it."""
    with RedisServer(appendonly=True) as primary, RedisServer(replica_of=primary.port) as replica:
        yield primary, replica


@pytest.fixture(scope="module")
def replicated_stack(
    redis_pair: tuple[RedisServer, RedisServer], fault_postgres: PostgresServer
) -> Iterator[GatewayStack]:
    primary, _ = redis_pair
    with running_stack(
        database_url=fault_postgres.create_database(DATABASE),
        redis_url=primary.url,
        replicas=2,
        upstreams={},
        route_timeouts={},
        extra_toml=WAITING,
    ) as started:
        yield started


async def _statuses(client: httpx.AsyncClient, stack: GatewayStack, marker: str) -> dict[int, int]:
    return {r: (await client.get(f"{stack.url(r)}/chat/?{marker}", headers=JSON)).status_code for r in REPLICAS}


async def _session_keys(server: RedisServer) -> list[str]:
    async with Redis.from_url(server.url, decode_responses=True) as client:
        return [str(key) async for key in client.scan_iter(match=SESSION_PREFIX + "*")]


async def test_a_deprovisioning_no_redis_replica_confirms_is_refused_and_retried_until_one_holds_it(
    replicated_stack: GatewayStack,
    redis_pair: tuple[RedisServer, RedisServer],
    fault_postgres: PostgresServer,
) -> None:
    stack, (primary, replica) = replicated_stack, redis_pair
    await until_replicated(primary.url, timeout=15)
    agent = await sign_in(stack, "agent06")
    try:
        assert await _statuses(agent, stack, "before") == {0: 200, 1: 200}
        assert await _session_keys(replica)  # the login replicated: the replica holds the session too
        replica.kill()

        refused = await admin_post(stack, "/agents/agent06/deprovision", {"reason": "left"})

        refused_with_the_agent_disabled(refused)
        # The primary applied the kill: the agent is refused everywhere at once, confirmed or not.
        assert await _statuses(agent, stack, "unconfirmed") == {0: 401, 1: 401}

        await asyncio.to_thread(replica.start)
        await until_replicated(primary.url, timeout=15)

        # The kill is retried until a replica confirms it, then recorded with the attempts it took.
        revoked = await eventually(
            lambda: asyncio.to_thread(
                fault_postgres.execute,
                "SELECT detail FROM access_log WHERE kind = 'sessions_revoked' AND agent_name = 'agent06'",
                DATABASE,
            ),
            timeout=RETRY_MAX_DELAY + 15,
        )
        assert '"attempts"' in revoked, revoked
        assert await _session_keys(replica) == []  # what a promoted replica would serve: nothing of agent06
        assert await _statuses(agent, stack, "after") == {0: 401, 1: 401}
    finally:
        await agent.aclose()
    confirmed = await admin_post(stack, "/agents/agent06/deprovision", {"reason": "left"})
    assert confirmed.status_code == 200 and confirmed.json()["active"] is False, confirmed.text
