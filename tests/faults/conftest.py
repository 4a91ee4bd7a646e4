"""What the fault tests share: one gateway stack of real processes, agents to sign in, small probes.

Starting a stack costs seconds, so every module shares one: two replicas on a Redis and a PostgreSQL cluster of
their own, so both can be killed without disturbing the rest of the suite. Redis keeps an append-only file, as
operators run it. The mail route goes through a fault proxy's port (``FAULTED_CHANNEL``, with a short timeout);
the console tests start the proxy there. The ``stack`` fixture brings back whatever an earlier test left broken
before each test. Agents are one-off accounts (``agent01`` ...), so a test that deprovisions one never disturbs
another.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.components.browserless_login import login
from tests.components.gateway import GatewayStack
from tests.components.oidc_provider import DEMO_PASSWORD, STANDARD_ACCOUNTS, OidcAccount, OidcProvider, provider_config
from tests.components.ports import LOOPBACK, free_port
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer

JSON = {"Accept": "application/json"}
#: The shared stack's database on ``fault_postgres``.
DATABASE = "channelgate_faults"
#: The channel whose route goes through the fault proxy's port, and that route's timeout (seconds).
FAULTED_CHANNEL = "mail"
FAULTED_ROUTE_TIMEOUT = 1.0

#: One-off chat agents: a test that deprovisions one takes its own.
AGENTS: tuple[OidcAccount, ...] = tuple(
    OidcAccount(
        sub=f"fault-agent-{number:04d}",
        username=f"agent{number:02d}",
        password=DEMO_PASSWORD,
        email=f"agent{number:02d}@example.com",
        name=f"Agent {number:02d}",
        groups=("chat-agents",),
    )
    for number in range(1, 21)
)


@contextlib.contextmanager
def running_stack(
    *,
    database_url: str,
    redis_url: str | None,
    replicas: int,
    upstreams: dict[str, str],
    route_timeouts: dict[str, float],
    extra_toml: str = "",
) -> Iterator[GatewayStack]:
    """An oidc-provider and a started ``GatewayStack`` (replicas as child processes), stopped afterwards."""
    stack = GatewayStack(
        issuer="", database_url=database_url, redis_url=redis_url, upstreams=upstreams, route_timeouts=route_timeouts,
        extra_toml=extra_toml,
    )  # fmt: skip
    stack.allocate(replicas=replicas)
    with OidcProvider(provider_config(stack.redirect_uris, accounts=STANDARD_ACCOUNTS + AGENTS)) as provider:
        stack.issuer = provider.issuer
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
            shutil.rmtree(stack.base_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def fault_redis() -> Iterator[RedisServer]:
    """The shared stack's Redis, with an append-only file."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture(scope="package")
def fault_postgres() -> Iterator[PostgresServer]:
    """The shared stack's PostgreSQL cluster (under /tmp, where the postgres user can reach it)."""
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-pg-faults-"))
    try:
        with PostgresServer(base_dir) as server:
            yield server
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def fault_proxy_port() -> int:
    """Where the faulted channel's route goes: a ``FaultProxy`` listens here while a console test runs."""
    return free_port()


@pytest.fixture(scope="package")
def fault_stack(
    fault_redis: RedisServer, fault_postgres: PostgresServer, fault_proxy_port: int
) -> Iterator[GatewayStack]:
    with running_stack(
        database_url=fault_postgres.create_database(DATABASE),
        redis_url=fault_redis.url,
        replicas=2,
        upstreams={FAULTED_CHANNEL: f"http://{LOOPBACK}:{fault_proxy_port}"},
        route_timeouts={FAULTED_CHANNEL: FAULTED_ROUTE_TIMEOUT},
    ) as started:
        yield started


@pytest.fixture
def stack(fault_stack: GatewayStack, fault_redis: RedisServer, fault_postgres: PostgresServer) -> GatewayStack:
    """The shared stack with Redis, PostgreSQL and both replicas running and ready, whatever a test before broke."""
    if not fault_redis.running:
        fault_redis.start()
    if not fault_postgres.running:
        fault_postgres.start()
    for replica in range(len(fault_stack.gateway_ports)):
        fault_stack.restart_replica(replica)
        fault_stack.wait_ready(replica)
    return fault_stack


async def sign_in(stack: GatewayStack, user: str) -> httpx.AsyncClient:
    """A client holding a new gateway session of ``user``; the caller closes it. The provider sends every login
    back to replica 0 (the public URL); the cookie is good on every replica (one host, 127.0.0.1)."""
    return await login(stack.url(0), user, DEMO_PASSWORD, return_to="/chat/")


async def audit_queue(stack: GatewayStack, replica: int = 0) -> int:
    """Access-log records the replica has answered for but not yet written (``channelgate_audit_queue``)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(stack.url(replica) + "/.channelgate/metrics")).text
    found = re.search(r"^channelgate_audit_queue (\S+)$", text, re.MULTILINE)
    assert found is not None, "no channelgate_audit_queue in /metrics"
    return int(float(found.group(1)))


async def admin_post(stack: GatewayStack, path: str, body: dict[str, Any], replica: int = 0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await client.post(
            stack.url(replica) + "/.channelgate/admin" + path,
            json=body,
            headers={"Authorization": f"Bearer {stack.admin_token}", **JSON},
        )


async def admin_get(stack: GatewayStack, path: str, replica: int = 0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await client.get(
            stack.url(replica) + "/.channelgate/admin" + path,
            headers={"Authorization": f"Bearer {stack.admin_token}", **JSON},
        )


async def status_of(stack: GatewayStack, path: str, replica: int = 0) -> int:
    """The status of an anonymous GET (readiness, health)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        return (await client.get(stack.url(replica) + path)).status_code


def no_traceback(response: httpx.Response) -> None:
    """A failure is a clean answer: a JSON error with a code and a message, never a stack trace."""
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text[:500]
    body = response.json()
    assert body["error"] and body["message"] and body["request_id"], body


def refused_with_the_agent_disabled(response: httpx.Response) -> None:
    """A deprovisioning whose kill was not confirmed: a clean 503 saying the sessions are not ended yet and the
    agent is disabled (the replica that took it keeps retrying the kill)."""
    assert response.status_code == 503, response.text
    no_traceback(response)
    assert response.json()["error"] == "sessions_not_ended"
    assert "is disabled" in response.json()["message"]
