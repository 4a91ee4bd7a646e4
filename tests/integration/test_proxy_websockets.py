"""The proxy's WebSockets against real servers: a uvicorn upstream and a small gateway app built from gateway.proxy
(tests/components/proxy_stack.py). Messages, subprotocol and close codes pass both ways with the channel
credential in place of the client's; the registry closes an agent's (or a session's) sockets and no other's; open
sockets never take the console's HTTP connections; a refused or unreachable upstream refuses the client's handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from tests.components.proxy_stack import CREDENTIAL, Stack, StackFactory


def ws_url(stack: Stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


async def test_websocket_echo_passes_text_binary_subprotocol_and_credential(stack: Stack) -> None:
    headers = {"Authorization": "Bearer from-client", "X_Auth_Request_Email": "spoof@example.com"}
    async with connect(
        ws_url(stack, "/chat/ws"), subprotocols=[Subprotocol("chat.v2")], additional_headers=headers
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        await ws.send("headers")
        upstream_headers = dict(json.loads(await ws.recv()))
        assert stack.gateway.registry.agents() == {"agent-1": 1}
    assert upstream_headers["authorization"] == CREDENTIAL
    assert "spoof@example.com" not in upstream_headers.values()
    assert upstream_headers["x-forwarded-for"] == "127.0.0.1"


async def test_an_upstream_close_code_reaches_the_client(stack: Stack) -> None:
    async with connect(ws_url(stack, "/chat/ws")) as ws:
        await ws.send("close-4000")
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None
    assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4000, "upstream says bye")


async def test_a_client_close_code_reaches_the_upstream(stack: Stack) -> None:
    async with connect(ws_url(stack, "/chat/ws")) as ws:
        await ws.send("ping")
        await ws.recv()
        await ws.close(4321, "agent closed the tab")
    for _ in range(100):
        if stack.log.ws_close_codes:
            break
        await asyncio.sleep(0.02)
    assert stack.log.ws_close_codes == [4321]
    for _ in range(100):
        if stack.gateway.registry.count() == 0:
            break
        await asyncio.sleep(0.02)
    assert stack.gateway.registry.count() == 0


async def test_open_websockets_leave_the_consoles_http_connections_free(stack_factory: StackFactory) -> None:
    # An open socket holds its upstream connection for hours: in the HTTP pool, limit_per_host of them (128 by
    # default) would stall every HTTP request to that console and every further socket until the route timeout.
    stack = await stack_factory(limit_per_host=2, timeout=2.0)
    async with httpx.AsyncClient(timeout=20) as http, contextlib.AsyncExitStack() as sockets:
        opened = [await sockets.enter_async_context(connect(ws_url(stack, "/chat/ws"))) for _ in range(4)]
        for ws in opened:
            await ws.send("ping")
            assert await ws.recv() == "ping"

        answers = await asyncio.gather(*(http.get(f"{stack.url}/chat/page-{n}") for n in range(4)))

        assert [answer.status_code for answer in answers] == [200] * 4
        assert stack.gateway.registry.count() == 4


async def test_close_agent_closes_every_socket_of_that_agent_and_no_other(stack: Stack) -> None:
    url = ws_url(stack, "/chat/ws")
    async with (
        connect(url, additional_headers={"X-Test-Agent": "alice"}) as first,
        connect(url, additional_headers={"X-Test-Agent": "alice"}) as second,
        connect(url, additional_headers={"X-Test-Agent": "bob"}) as bob,
    ):
        for ws in (first, second, bob):
            await ws.send("ready")
            await ws.recv()
        assert stack.gateway.registry.agents() == {"alice": 2, "bob": 1}

        closed = await stack.gateway.registry.close_agent("alice")

        assert closed == 2
        for ws in (first, second):
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            assert caught.value.rcvd is not None
            assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (1008, "access revoked")
        await bob.send("still here")
        assert await bob.recv() == "still here"
        assert stack.gateway.registry.agents() == {"bob": 1}
    for _ in range(100):
        if len(stack.log.ws_close_codes) >= 3:
            break
        await asyncio.sleep(0.02)
    assert stack.log.ws_close_codes.count(1008) == 2


async def test_close_session_closes_the_sockets_of_that_session_and_not_the_agents_others(stack: Stack) -> None:
    url = ws_url(stack, "/chat/ws")
    async with (
        connect(url, additional_headers={"X-Test-Agent": "alice", "X-Test-Session": "laptop"}) as first,
        connect(url, additional_headers={"X-Test-Agent": "alice", "X-Test-Session": "laptop"}) as second,
        connect(url, additional_headers={"X-Test-Agent": "alice", "X-Test-Session": "phone"}) as phone,
    ):
        for ws in (first, second, phone):
            await ws.send("ready")
            await ws.recv()

        assert await stack.gateway.registry.close_session("laptop") == 2

        for ws in (first, second):
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            assert caught.value.rcvd is not None
            assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (1008, "session ended")
        await phone.send("still here")
        assert await phone.recv() == "still here"
        assert stack.gateway.registry.agents() == {"alice": 1}
        assert await stack.gateway.registry.close_session("laptop") == 0


async def test_an_upstream_refusing_the_websocket_refuses_the_client_handshake(stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(ws_url(stack, "/chat/ws-deny")):
            pass
    assert caught.value.response.status_code == 403
    assert stack.gateway.registry.count() == 0


async def test_an_unreachable_websocket_upstream_answers_502(stack_factory: StackFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    stack = await stack_factory(upstream=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(InvalidStatus) as caught:
        async with connect(ws_url(stack, "/chat/ws")):
            pass
    assert caught.value.response.status_code == 502
