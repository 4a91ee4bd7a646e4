"""A console's WebSocket and streamed responses live no longer than the session they were opened under (ASVS 5.0
7.4.1, 7.3.1, 7.3.2), against the real gateway, a real provider, echo consoles and, for two replicas, Redis.

Logout (and a lookup that finds a session expired) broadcasts the session's end and every replica closes that
session's connections with 1008, and no other session's; the absolute and idle timeouts close them by themselves,
with no request to notice; a WebSocket the agent is using is activity and keeps the idle clock going
(gateway/sessions/watch.py). A WebSocket handshake from a foreign ``Origin`` is refused (cross-site WebSocket
hijacking from a sibling host of the same site).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.components.asgi_server import bound_socket
from tests.components.echo_gateway import Deployment, cookie_of, deployment
from tests.components.inprocess import running_gateway
from tests.components.oidc_provider import OidcProviderFactory
from tests.components.ports import LOOPBACK

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]
JSON = {"Accept": "application/json"}
LOGOUT = "/.channelgate/logout"


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory) as deployed:
        yield deployed


@pytest.fixture
def clock(gateway: Deployment) -> Iterator[list[float]]:
    """``clock[0]`` seconds are added to the gateway's clock for this test."""
    offset = [0.0]
    gateway.services.clock = lambda: time.time() + offset[0]
    yield offset
    gateway.services.clock = time.time


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/chat/ws"


async def relays(ws: ClientConnection, text: str) -> bool:
    try:
        await ws.send(text)
        return await asyncio.wait_for(ws.recv(), timeout=3) == text
    except (ConnectionClosed, TimeoutError):
        return False


async def close_code(ws: ClientConnection, within: float = 5.0) -> int | None:
    """The close code the gateway sent, waiting up to ``within`` s for it (None: still open)."""
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    except TimeoutError:
        return None


async def logout(gateway_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(gateway_url + LOGOUT, headers={"Origin": gateway_url})
    assert response.status_code == 303


async def test_logout_closes_that_sessions_console_websocket_with_1008_and_no_other_sessions(
    gateway: Deployment,
) -> None:
    laptop, phone = await gateway.login("alice"), await gateway.login("alice")
    async with (
        connect(ws_url(gateway.url), additional_headers={"Cookie": cookie_of(laptop)}) as ended,
        connect(ws_url(gateway.url), additional_headers={"Cookie": cookie_of(phone)}) as other,
    ):
        assert await relays(ended, "before") and await relays(other, "before")

        await logout(gateway.url, laptop)

        assert await close_code(ended) == 1008
        assert await relays(other, "the other session's socket stays")
    assert (await phone.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200


async def test_logout_ends_that_sessions_streamed_response(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    async with alice.stream("GET", gateway.url + "/chat/events") as events:
        chunks = events.aiter_bytes()
        assert (await anext(chunks)).startswith(b"data:")

        await logout(gateway.url, alice)

        async def drained() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async for _ in chunks:
                    pass

        await asyncio.wait_for(drained(), timeout=5)  # an endless stream, cut
    for _ in range(50):
        if gateway.services.live.count() == 0:
            break
        await asyncio.sleep(0.05)
    assert gateway.services.live.count() == 0


@pytest.mark.redis
@pytest.mark.parametrize("cache", ["", "local_cache_seconds = 5"], ids=["redis", "redis-cached"])
async def test_a_logout_on_one_replica_closes_the_sessions_websocket_on_another(
    oidc_provider_factory: OidcProviderFactory, redis_url: str, cache: str
) -> None:
    async with deployment(oidc_provider_factory, redis_url=redis_url, extra_sessions_toml=cache) as first:
        sock = bound_socket()
        try:
            async with running_gateway(first.services.settings, sock):
                second = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
                alice = await first.login("alice")
                async with connect(ws_url(second), additional_headers={"Cookie": cookie_of(alice)}) as ws:
                    assert await relays(ws, "on the second replica")

                    await logout(first.url, alice)

                    assert await close_code(ws) == 1008
        finally:
            sock.close()


async def test_the_absolute_timeout_closes_the_open_websocket_with_no_request_to_notice(
    gateway: Deployment, clock: list[float]
) -> None:
    alice = await gateway.login("alice")
    async with connect(ws_url(gateway.url), additional_headers={"Cookie": cookie_of(alice)}) as ws:
        assert await relays(ws, "fresh")
        clock[0] = gateway.services.settings.sessions.absolute_timeout_seconds + 1

        assert await close_code(ws) == 1008
    assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 401


async def test_a_lookup_that_finds_the_session_expired_closes_its_websocket_at_once(
    gateway: Deployment, clock: list[float]
) -> None:
    alice = await gateway.login("alice")
    async with connect(ws_url(gateway.url), additional_headers={"Cookie": cookie_of(alice)}) as ws:
        assert await relays(ws, "fresh")
        clock[0] = gateway.services.settings.sessions.idle_timeout_seconds + 1
        refused = await alice.get(gateway.url + "/chat/echo", headers=JSON)
        assert refused.status_code == 401 and refused.json()["error"] == "session_expired"

        assert await close_code(ws, within=0.9) == 1008  # the broadcast, before the next sweep could


async def test_an_unused_websocket_closes_when_its_session_has_been_idle_for_the_timeout(
    gateway: Deployment, clock: list[float]
) -> None:
    alice = await gateway.login("alice")
    async with connect(ws_url(gateway.url), additional_headers={"Cookie": cookie_of(alice)}) as ws:
        clock[0] = gateway.services.settings.sessions.idle_timeout_seconds + 1

        assert await close_code(ws) == 1008
    assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 401


async def test_requests_elsewhere_keep_an_unused_websockets_session_alive_past_the_idle_timeout(
    gateway: Deployment, clock: list[float]
) -> None:
    idle = gateway.services.settings.sessions.idle_timeout_seconds
    alice = await gateway.login("alice")
    async with connect(ws_url(gateway.url), additional_headers={"Cookie": cookie_of(alice)}) as ws:
        clock[0] = idle * 0.8
        assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200
        clock[0] = idle * 1.2

        assert await close_code(ws, within=2.5) is None
        assert await relays(ws, "still open")


async def test_a_websocket_in_use_is_activity_and_keeps_its_session_past_the_idle_timeout(
    gateway: Deployment, clock: list[float]
) -> None:
    idle = gateway.services.settings.sessions.idle_timeout_seconds
    alice = await gateway.login("alice")
    async with connect(ws_url(gateway.url), additional_headers={"Cookie": cookie_of(alice)}) as ws:
        assert await relays(ws, "working")
        clock[0] = idle * 0.6
        await asyncio.sleep(2.5)  # a sweep refreshes the session's idle clock: the agent was using it
        clock[0] = idle * 1.2

        assert await close_code(ws, within=2.5) is None
        assert await relays(ws, "still working")
    assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200


@pytest.mark.parametrize(
    "origin",
    ["http://sibling.corp.example", "null", "http://localhost:{port}", "{url}.evil.example", "https://{host}:{port}"],
)
async def test_a_websocket_handshake_from_a_foreign_origin_is_refused_and_recorded(
    gateway: Deployment, origin: str
) -> None:
    url = httpx.URL(gateway.url)
    foreign = origin.format(url=gateway.url, host=url.host, port=url.port)
    alice = await gateway.login("alice")
    headers = {"Cookie": cookie_of(alice), "Origin": foreign}

    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(gateway.url), additional_headers=headers):
            pass

    assert refused.value.response.status_code == 403
    assert not [seen for seen in gateway.consoles["chat"].seen if seen.method == "WEBSOCKET"]
    await gateway.services.audit.flush()
    records = await gateway.services.audit._repository.tail(20)
    [record] = [r for r in records if r.method == "WEBSOCKET"]
    assert (record.status, record.path) == (403, "/chat/ws")
    assert record.detail == {"error": "cross_origin_websocket", "origin": foreign}


@pytest.mark.parametrize("same_origin", [True, False], ids=["same-origin", "no-origin"])
async def test_a_websocket_handshake_from_the_gateways_origin_or_without_origin_is_served(
    gateway: Deployment, same_origin: bool
) -> None:
    alice = await gateway.login("alice")
    headers = {"Cookie": cookie_of(alice)}
    if same_origin:
        headers["Origin"] = gateway.url
    async with connect(ws_url(gateway.url), additional_headers=headers) as ws:
        assert await relays(ws, "hello")
    [handshake] = [seen for seen in gateway.consoles["chat"].seen if seen.method == "WEBSOCKET"]
    assert handshake.values("authorization") == [f"Bearer {gateway.credentials['chat']}"]
