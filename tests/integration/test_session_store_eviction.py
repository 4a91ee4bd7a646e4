"""A Redis that may evict keys (``maxmemory`` set, ``maxmemory-policy`` other than ``noeviction``) is refused at
start and reported while running, against real ``redis-server`` processes (gateway/sessions/redis_eviction.py).

Evicted, an agent's index of sessions is gone while its sessions stay: a deprovisioning reads the index and
leaves them valid.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.errors import ConfigError
from gateway.services import Services
from gateway.sessions.factory import create_session_store
from gateway.settings import SessionSettings, Settings
from gateway.storage.migrate import upgrade_to_head
from tests.components.ports import free_port
from tests.components.redis_server import RedisServer
from tests.scim.harness import scim_settings

pytestmark = pytest.mark.redis

UNSAFE_METRIC = "channelgate_session_store_eviction_unsafe_total"


@pytest.fixture
def redis_config() -> dict[str, str]:
    return {}


@pytest.fixture
def own_redis(redis_config: dict[str, str]) -> Iterator[RedisServer]:
    with RedisServer(config=redis_config) as server:
        yield server


async def _settings(tmp_path: Path, redis_url: str) -> Settings:
    settings = scim_settings(tmp_path, "http://127.0.0.1:9")
    await upgrade_to_head(settings.database.url.get_secret_value())
    sessions = SessionSettings.model_validate({"store": "redis", "redis_url": redis_url})
    return settings.model_copy(update={"sessions": sessions})


@asynccontextmanager
async def _started(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Starlette, Services]]:
    app = create_app(await _settings(tmp_path, redis_url))
    async with app.router.lifespan_context(app):
        yield app, app.state.services


async def _readiness(app: Starlette) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        return await client.get("/.channelgate/readyz")


def _session_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "channelgate.sessions" and r.levelno == level]


@pytest.mark.parametrize(
    "redis_config",
    [
        {"maxmemory": "100mb", "maxmemory-policy": "allkeys-lru"},
        {"maxmemory": "100mb", "maxmemory-policy": "volatile-lru"},
    ],
    ids=["allkeys-lru", "volatile-lru"],
)
async def test_the_gateway_refuses_to_start_on_a_redis_that_may_evict_keys_and_says_how_to_fix_it(
    tmp_path: Path, own_redis: RedisServer, redis_config: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        async with _started(tmp_path, own_redis.url):
            pytest.fail("the gateway started on a Redis that may evict its indexes")
    message = caught.value.message
    assert f"maxmemory-policy {redis_config['maxmemory-policy']}" in message
    assert "deprovisioning" in message  # why: an evicted index leaves the agent's sessions valid
    assert "set maxmemory-policy noeviction" in message and "maxmemory 0" in message


@pytest.mark.parametrize(
    "redis_config",
    [{"maxmemory": "100mb", "maxmemory-policy": "noeviction"}, {"maxmemory": "0", "maxmemory-policy": "allkeys-lru"}],
    ids=["noeviction-with-a-limit", "allkeys-lru-without-a-limit"],
)
async def test_the_gateway_starts_ready_on_a_redis_that_never_evicts(tmp_path: Path, own_redis: RedisServer) -> None:
    async with _started(tmp_path, own_redis.url) as (app, _):
        response = await _readiness(app)
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["sessions"] == "ok"


@pytest.mark.parametrize("redis_config", [{"maxmemory": "100mb", "maxmemory-policy": "noeviction"}])
async def test_an_eviction_policy_set_at_runtime_is_logged_counted_and_makes_the_replica_not_ready_until_undone(
    tmp_path: Path, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with _started(tmp_path, own_redis.url) as (app, services), Redis.from_url(own_redis.url) as admin:
        with caplog.at_level(logging.INFO, logger="channelgate.sessions"):
            await services.sessions.heartbeat()
            assert services.metrics.registry.get_sample_value(UNSAFE_METRIC) == 0
            await admin.config_set("maxmemory-policy", "allkeys-lru")
            await services.sessions.heartbeat()  # the next check
            await services.sessions.heartbeat()  # logged and counted once, not at every heartbeat
            [error] = _session_logs(caplog, logging.ERROR)
            assert "maxmemory-policy allkeys-lru" in error and "set maxmemory-policy noeviction" in error
            assert services.metrics.registry.get_sample_value(UNSAFE_METRIC) == 1
            not_ready = await _readiness(app)
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"]["sessions"] == "config_error"
            await admin.config_set("maxmemory-policy", "noeviction")
            await services.sessions.heartbeat()
            assert (await _readiness(app)).status_code == 200
    assert any("evicts no keys again" in message for message in _session_logs(caplog, logging.INFO))


async def test_a_redis_user_not_allowed_info_starts_with_a_warning_that_the_eviction_check_is_off(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with Redis.from_url(own_redis.url) as admin:
        await admin.acl_setuser(
            "gateway", enabled=True, passwords=["+gateway-password"], keys=["*"], channels=["*"],
            categories=["+@all"], commands=["-info"],
        )  # fmt: skip
    url = own_redis.url.replace("redis://", "redis://gateway:gateway-password@")
    store = create_session_store(SessionSettings.model_validate({"store": "redis", "redis_url": url}), "replica-a")
    try:
        with caplog.at_level(logging.INFO, logger="channelgate.sessions"):
            await store.verify_server()
            await store.heartbeat()  # told once, then not asked again
            await store.ping()
    finally:
        await store.close()
    [warning] = [w for w in _session_logs(caplog, logging.WARNING) if "eviction" in w]
    assert "INFO memory" in warning and "no permissions" in warning
    assert "gateway-password" not in warning


async def test_an_unreachable_redis_at_start_is_checked_later_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    """As before: connecting is lazy and an outage shows on first use (503); the heartbeat checks once it is back
    (here it comes back evicting keys: the heartbeat finds it, logs it, and readiness says so)."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = create_session_store(SessionSettings.model_validate({"store": "redis", "redis_url": url}), "replica-a")
    try:
        with caplog.at_level(logging.INFO, logger="channelgate.sessions"):
            await store.verify_server()
            [warning] = _session_logs(caplog, logging.WARNING)
            assert "eviction" in warning and "heartbeat" in warning
            with RedisServer(port, config={"maxmemory": "100mb", "maxmemory-policy": "allkeys-lru"}):
                await store.heartbeat()
                [error] = _session_logs(caplog, logging.ERROR)
                assert "maxmemory-policy allkeys-lru" in error
                with pytest.raises(ConfigError):
                    await store.ping()
    finally:
        await store.close()
