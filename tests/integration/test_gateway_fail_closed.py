"""Fail closed (security-tests items 11 and 12): a dependency down means refused, never a pass.

Redis down → every proxied request is 503 and the login page answers 503 (not 500); when Redis comes back the
gateway recovers by itself, and since Redis restarts empty the old session is gone. PostgreSQL down → the
privileged action (deprovision) answers 503 and claims nothing; after a restart it works.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.components.echo_gateway import Deployment, deployment, eventually
from tests.components.oidc_provider import OidcProviderFactory
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer

HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test alone, so it can be killed under the gateway."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test alone, so it can be stopped under the gateway."""
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-pg-fault-"))
    try:
        with PostgresServer(base_dir) as server:
            yield server
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture
async def redis_gateway(
    own_redis: RedisServer, oidc_provider_factory: OidcProviderFactory
) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory, redis_url=own_redis.url) as deployed:
        yield deployed


@pytest.fixture
async def postgres_gateway(
    own_postgres: PostgresServer, oidc_provider_factory: OidcProviderFactory
) -> AsyncIterator[Deployment]:
    url = own_postgres.create_database("channelgate_fault")
    async with deployment(oidc_provider_factory, database_url=url) as deployed:
        yield deployed


async def _ready(gateway: Deployment) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(gateway.url + "/.channelgate/readyz")


@pytest.mark.redis
@pytest.mark.oidc
@pytest.mark.timeout(90)
async def test_redis_down_refuses_every_request_and_recovery_does_not_resurrect_the_session(
    redis_gateway: Deployment, own_redis: RedisServer
) -> None:
    gateway = redis_gateway
    alice = await gateway.login("alice")
    assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200
    seen_before = len(gateway.consoles["chat"].seen)

    own_redis.kill()

    for headers in (JSON, HTML):
        response = await alice.get(gateway.url + "/chat/echo", headers=headers)
        assert response.status_code == 503, response.text[:300]
        assert response.headers["retry-after"]
    assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).json()["error"] == "session_store_unavailable"
    assert len(gateway.consoles["chat"].seen) == seen_before  # nothing passed while the store was down

    ready = await _ready(gateway)
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["sessions"] == "session_store_unavailable"

    async with httpx.AsyncClient() as browser:
        login_page = await browser.get(gateway.url + "/.channelgate/login?rd=/chat/", headers=HTML)
    assert login_page.status_code == 503
    assert "Temporarily unavailable" in login_page.text
    assert "Traceback" not in login_page.text

    own_redis.restart()

    await eventually(lambda: _status_is(gateway.url + "/.channelgate/readyz", 200))
    after = await alice.get(gateway.url + "/chat/echo", headers=JSON)
    assert after.status_code == 401
    browser_after = await alice.get(gateway.url + "/chat/", headers=HTML)
    assert browser_after.status_code == 302
    assert browser_after.headers["location"].startswith("/.channelgate/login")
    assert len(gateway.consoles["chat"].seen) == seen_before

    again = await gateway.login("alice")
    assert (await again.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200


@pytest.mark.redis
@pytest.mark.oidc
@pytest.mark.timeout(90)
async def test_redis_down_makes_the_admin_status_say_the_sessions_were_not_checked_never_zero(
    redis_gateway: Deployment, own_redis: RedisServer
) -> None:
    gateway = redis_gateway
    await gateway.login("alice")
    own_redis.kill()
    async with httpx.AsyncClient() as admin:
        status = await admin.get(gateway.url + "/.channelgate/admin/agents/alice", headers=gateway.admin_headers())
    assert status.status_code == 200
    body = status.json()
    assert body["live_sessions"] is None, body  # an operator checking a departed agent must not read "0"
    assert body["live_sessions_not_checked"].startswith("the redis session store was not checked: ")
    assert body["active"] is True and body["deprovisioning"] is not None


async def _status_is(url: str, status: int) -> bool:
    async with httpx.AsyncClient() as client:
        return (await client.get(url)).status_code == status


@pytest.mark.postgres
@pytest.mark.oidc
@pytest.mark.timeout(120)
async def test_database_down_makes_deprovision_answer_503_without_claiming_success(
    postgres_gateway: Deployment, own_postgres: PostgresServer
) -> None:
    gateway = postgres_gateway
    alice = await gateway.login("alice")
    deprovision = gateway.url + "/.channelgate/admin/agents/alice/deprovision"

    await asyncio.to_thread(own_postgres.stop)
    async with httpx.AsyncClient() as admin:
        refused = await admin.post(deprovision, json={"reason": "left"}, headers=gateway.admin_headers())
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["error"] == "storage_unavailable"
    assert "sessions_revoked" not in body and "active" not in body
    assert body["request_id"]

    ready = await _ready(gateway)
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "storage_unavailable", "sessions": "ok"}
    # Neither answer says where the database is: that is in the log, for the operator.
    database = gateway.services.database.engine.url
    for answer in (refused, ready):
        assert f"{database.host}:{database.port}" not in answer.text and str(database.database) not in answer.text

    await asyncio.to_thread(own_postgres.start)
    await eventually(lambda: _status_is(gateway.url + "/.channelgate/readyz", 200), timeout=20)
    # The failed attempt changed nothing: alice still works until a deprovision succeeds.
    assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200
    async with httpx.AsyncClient() as admin:
        done = await admin.post(deprovision, json={"reason": "left"}, headers=gateway.admin_headers())
    assert done.status_code == 200, done.text
    assert done.json()["active"] is False
    assert done.json()["sessions_revoked"] == 1
    assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 401
