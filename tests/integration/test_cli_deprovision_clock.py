"""``channelgate agents deprovision`` takes no part in the replicas' clock vote (gateway/sessions/redis_clock.py):
the end it saves — replayed after a session-store outage over the sessions created before it, plus a margin for
the replicas' skew (gateway/deprovision/revived.py) — is stamped on the serving replicas' clock read from Redis,
not on its own host's (gateway/deprovision/endings.py ``EndClock``). Against a real Redis, the CLI run as a process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest

from gateway.sessions.redis_store import RedisSessionStore
from gateway.storage.session_ends import EndKind
from tests.components.echo_gateway import deployment
from tests.components.oidc_provider import OidcProviderFactory
from tests.components.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.oidc, pytest.mark.timeout(90)]


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis of this test alone: the replicas' clocks it holds must be only this test's."""
    with RedisServer() as server:
        yield server.url


async def test_the_cli_stamps_the_end_it_saves_on_the_serving_replicas_clock(
    redis_url: str, oidc_provider_factory: OidcProviderFactory
) -> None:
    async with deployment(oidc_provider_factory, redis_url=redis_url) as gateway:
        await gateway.login("carol")
        async with AsyncExitStack() as stack:
            for name in ("replica-x", "replica-y"):  # their clocks 60 s ahead: with this one, the majority of three
                store = RedisSessionStore(redis_url, 1800, 28800, name, wall_clock=lambda: time.time() + 60.0)
                stack.push_async_callback(store.close)
                await store.heartbeat()
            before = time.time()
            done = await gateway.cli("agents", "deprovision", "carol", "--reason", "left")
        assert done.returncode == 0, done.stderr
        ends = await gateway.services.logouts.since(datetime.fromtimestamp(before - 3600, UTC))
        [end] = [e for e in ends if e.kind is EndKind.AGENT]
        # This host's clock would say ~before; the replicas', by which carol's next sessions are stamped, ~before + 60.
        assert end.ended_at.timestamp() == pytest.approx(before + 60.0, abs=10.0)
