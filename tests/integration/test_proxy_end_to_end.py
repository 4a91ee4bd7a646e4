"""The proxy against real servers: a uvicorn upstream and a small gateway app built from gateway.proxy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from gateway.errors import ChannelgateError
from gateway.proxy import (
    ForwardStats,
    RouteTable,
    UpstreamClient,
    WebSocketRegistry,
    client_address,
    normalise_path,
    proxy_websocket,
    sanitise_request_headers,
    upstream_url,
)
from gateway.settings import RouteSettings

GATEWAY_COOKIES = ("__Host-channelgate",)
CREDENTIAL = "Bearer channel-credential-s3cret"
MB = 1024 * 1024


# --- servers ------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in this event loop; yield its base URL."""
    # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it
    # every small response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="critical",
        # uvicorn's own ProxyHeadersMiddleware trusts X-Forwarded-For from 127.0.0.1 by default and rewrites
        # scope["client"]; the gateway decides that itself (client_address), so it must be off.
        proxy_headers=False,
        ws="websockets-sansio",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class UpstreamLog:
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    ws_close_codes: list[int] = field(default_factory=list)


def upstream_app(log: UpstreamLog) -> Starlette:
    async def echo(request: Request) -> Response:
        digest = hashlib.sha256()
        length = chunks = 0
        async for chunk in request.stream():
            if chunk:
                digest.update(chunk)
                length += len(chunk)
                chunks += 1
        return JSONResponse(
            {
                "method": request.method,
                "path": request.scope["raw_path"].decode("latin-1"),
                "query": request.scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
                "length": length,
                "chunks": chunks,
                "sha256": digest.hexdigest(),
            }
        )

    async def big(request: Request) -> Response:
        size = int(request.query_params["size"])

        async def body() -> AsyncIterator[bytes]:
            block = b"x" * 65536
            sent = 0
            while sent < size:
                part = block[: size - sent]
                sent += len(part)
                yield part

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def endless(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"y" * 65536
                    await asyncio.sleep(0.01)
            finally:
                log.stream_closed.set()

        return StreamingResponse(body())

    async def sse(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: event {i}\n\n".encode()
                await asyncio.sleep(0.4)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def hang(request: Request) -> Response:
        await asyncio.sleep(30)
        return PlainTextResponse("too late")

    async def cookies(request: Request) -> Response:
        response = PlainTextResponse("ok")
        response.raw_headers += [
            (b"set-cookie", b"__Host-channelgate=evil; Path=/; Secure"),
            (b"set-cookie", b"console=1; Path=/"),
        ]
        return response

    async def ws_echo(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="chat.v2" if "chat.v2" in offered else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    log.ws_close_codes.append(message.get("code", 1000))
                    return
                text = message.get("text")
                if text == "headers":
                    headers = [[k.decode(), v.decode()] for k, v in websocket.scope["headers"]]
                    await websocket.send_text(json.dumps(headers))
                elif text == "close-4000":
                    await websocket.close(4000, "upstream says bye")
                    return
                elif text is not None:
                    await websocket.send_text(text)
                else:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect as exc:
            log.ws_close_codes.append(exc.code)

    async def ws_deny(websocket: WebSocket) -> None:
        await websocket.close(1008)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/big", big),
            Route("/endless", endless),
            Route("/sse", sse),
            Route("/hang", hang),
            Route("/cookies", cookies),
            WebSocketRoute("/ws", ws_echo),
            WebSocketRoute("/ws-deny", ws_deny),
            Route("/{path:path}", echo, methods=methods),
        ]
    )


class Gateway:
    """What the real app does around the proxy, minus sessions and policy: path → route → headers → forward."""

    def __init__(self, routes: Sequence[RouteSettings], client: UpstreamClient, trusted: Sequence[str]) -> None:
        self.table = RouteTable(routes)
        self.client = client
        self.trusted = tuple(trusted)
        self.registry = WebSocketRegistry()
        self.stats: list[ForwardStats] = []
        self.stats_done = asyncio.Event()

    async def _record(self, stats: ForwardStats) -> None:
        self.stats.append(stats)
        self.stats_done.set()

    def _prepare(self, scope: Scope) -> tuple[str, float] | Response:
        path = normalise_path(scope["raw_path"])
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        host = dict(raw_headers).get(b"host", b"").decode("latin-1")
        match = self.table.match(host, path)
        if match is None:
            return PlainTextResponse("no route", status_code=404)
        if match.redirect:
            return RedirectResponse(match.location, status_code=308)
        ip = client_address(scope["client"][0], raw_headers, self.trusted)
        headers = sanitise_request_headers(
            raw_headers,
            gateway_cookie_names=GATEWAY_COOKIES,
            client_ip=ip,
            scheme="http",
            host=host,
            max_header_bytes=16384,
        )
        headers.append(("authorization", CREDENTIAL))
        scope["state"] = {"headers": headers}
        url = upstream_url(match, path, scope["query_string"].decode("latin-1"))
        return url, match.route.timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            websocket = WebSocket(scope, receive, send)
            try:
                prepared = self._prepare(scope)
            except ChannelgateError as exc:
                await websocket.close(1008, exc.message[:100])
                return
            assert not isinstance(prepared, Response)
            ws_url = prepared[0]
            agent = dict(scope["headers"]).get(b"x-test-agent", b"agent-1").decode()
            await proxy_websocket(
                websocket, ws_url, scope["state"]["headers"], self.client.websocket_session, self.registry, agent
            )
            return
        assert scope["type"] == "http"
        request = Request(scope, receive)
        response: Response
        try:
            prepared = self._prepare(scope)
            if isinstance(prepared, Response):
                response = prepared
            else:
                url, timeout = prepared
                response = await self.client.forward(
                    request,
                    url,
                    scope["state"]["headers"],
                    timeout,
                    gateway_cookie_names=GATEWAY_COOKIES,
                    on_complete=self._record,
                )
        except ChannelgateError as exc:
            response = PlainTextResponse(exc.message, status_code=exc.status)
        await response(scope, receive, send)


@dataclass
class Stack:
    gateway: Gateway
    url: str
    upstream_url: str
    log: UpstreamLog


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def stack_factory() -> AsyncIterator[StackFactory]:
    async with contextlib.AsyncExitStack() as exits:
        client = await exits.enter_async_context(UpstreamClient())

        async def make(
            *,
            trusted: Sequence[str] = (),
            timeout: float = 5.0,
            upstream: str | None = None,
            limit_per_host: int | None = None,
        ) -> Stack:
            own = limit_per_host is not None
            pool = await exits.enter_async_context(UpstreamClient(limit_per_host=limit_per_host)) if own else client
            log = UpstreamLog()
            upstream_base = await exits.enter_async_context(serve(upstream_app(log)))
            route = RouteSettings.model_validate(
                {
                    "channel": "chat",
                    "prefix": "/chat/",
                    "upstream": upstream or upstream_base,
                    "timeout_seconds": timeout,
                }
            )
            gateway = Gateway([route], pool, trusted)
            url = await exits.enter_async_context(serve(gateway))
            return Stack(gateway, url, upstream_base, log)

        yield make


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


def upstream_saw(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    seen: dict[str, Any] = response.json()
    return seen


def header_values(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k == name]


async def raw_request(base_url: str, target: str) -> tuple[int, bytes]:
    """Send a request line byte for byte (httpx would normalise the path first)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest


# --- headers ------------------------------------------------------------------------------------------------

SPOOFED = [
    "X-Forwarded-For",
    "x_forwarded_for",
    "X-FORWARDED-HOST",
    "X-Forwarded-Proto",
    "Forwarded",
    "X-Real-IP",
    "True-Client-IP",
    "X-Auth-Request-Email",
    "X_Auth_Request_User",
    "X_Channelgate_User",
    "X-Channelgate-Assertion",
    "Remote-User",
    "X-Remote-User",
    "X-User",
    "X-Email",
    "X-Groups",
    "X-Original-URL",
    "X-Rewrite-URL",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Authorization",
]


@pytest.mark.parametrize("name", SPOOFED)
async def test_spoofed_identity_and_hop_by_hop_headers_never_reach_the_upstream(
    stack: Stack, http: httpx.AsyncClient, name: str
) -> None:
    response = await http.get(f"{stack.url}/chat/echo", headers={name: "spoofed-admin"})
    seen = upstream_saw(response)
    assert all("spoofed-admin" not in v for _, v in seen["headers"]), seen["headers"]
    assert header_values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(seen, "x-forwarded-proto") == ["http"]


async def test_headers_named_in_connection_never_reach_the_upstream(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(
        f"{stack.url}/chat/echo", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-End": "kept"}
    )
    seen = upstream_saw(response)
    assert header_values(seen, "x-hop") == []
    assert header_values(seen, "x-end") == ["kept"]


async def test_client_authorization_is_replaced_by_the_channel_credential(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    seen = upstream_saw(await http.get(f"{stack.url}/chat/echo", headers={"Authorization": "Bearer from-client"}))
    assert header_values(seen, "authorization") == [CREDENTIAL]
    assert header_values(seen, "host") == [stack.upstream_url.removeprefix("http://")]


async def test_gateway_cookie_is_removed_and_other_cookies_are_kept(stack: Stack, http: httpx.AsyncClient) -> None:
    seen = upstream_saw(
        await http.get(f"{stack.url}/chat/echo", headers={"Cookie": "__Host-channelgate=session; lang=ko; a=b"})
    )
    assert header_values(seen, "cookie") == ["lang=ko; a=b"]


async def test_upstream_cannot_overwrite_the_gateway_session_cookie(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{stack.url}/chat/cookies")
    assert response.headers.get_list("set-cookie") == ["console=1; Path=/"]


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(stack: Stack, http: httpx.AsyncClient) -> None:
    seen = upstream_saw(await http.get(f"{stack.url}/chat/echo", headers={"X-Forwarded-For": "203.0.113.9"}))
    assert header_values(seen, "x-forwarded-for") == ["127.0.0.1"]


async def test_forwarded_for_from_a_trusted_proxy_is_honoured(
    stack_factory: StackFactory, http: httpx.AsyncClient
) -> None:
    stack = await stack_factory(trusted=["127.0.0.0/8"])
    seen = upstream_saw(
        await http.get(f"{stack.url}/chat/echo", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 127.0.0.2"})
    )
    assert header_values(seen, "x-forwarded-for") == ["203.0.113.9"]


async def test_oversized_request_headers_are_answered_with_431(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{stack.url}/chat/echo", headers={f"X-Pad-{i}": "p" * 1000 for i in range(20)})
    assert response.status_code == 431


# --- paths --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["/chat/..;/admin", "/chat/%2e%2e/admin", "/chat/.%2E/admin", "/chat%2fadmin", "/chat/a%5c..%5cb"]
)
async def test_ambiguous_paths_are_refused_before_routing(stack: Stack, target: str) -> None:
    status, _ = await raw_request(stack.url, target)
    assert status == 400


async def test_the_upstream_sees_the_canonical_path_and_the_raw_query(stack: Stack) -> None:
    status, body = await raw_request(stack.url, "/chat//inbox/%7Eme/%41?q=a%20b&x")
    assert status == 200
    seen = json.loads(body.partition(b"\r\n\r\n")[2])
    assert seen["path"] == "/inbox/~me/A"
    assert seen["query"] == "q=a%20b&x"


async def test_a_prefix_without_its_trailing_slash_redirects(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{stack.url}/chat")
    assert response.status_code == 308
    assert response.headers["location"] == "/chat/"


# --- bodies -------------------------------------------------------------------------------------------------


async def test_a_request_without_a_body_is_sent_without_one(stack: Stack, http: httpx.AsyncClient) -> None:
    for method in ("GET", "HEAD", "DELETE"):
        response = await http.request(method, f"{stack.url}/chat/echo")
        assert response.status_code == 200
        if method != "HEAD":
            seen = response.json()
            assert header_values(seen, "transfer-encoding") == []
            assert header_values(seen, "content-length") in ([], ["0"])
            assert seen["length"] == 0


async def test_a_ten_megabyte_chunked_upload_streams_to_the_upstream(stack: Stack, http: httpx.AsyncClient) -> None:
    block = bytes(range(256)) * 256
    expected = hashlib.sha256(block * 160).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(160):
            yield block

    seen = upstream_saw(await http.post(f"{stack.url}/chat/upload", content=body()))
    assert (seen["length"], seen["sha256"]) == (10 * MB, expected)
    assert seen["chunks"] > 1
    await asyncio.wait_for(stack.gateway.stats_done.wait(), 5)
    assert stack.gateway.stats[-1].bytes_in == 10 * MB


async def test_a_ten_megabyte_upload_with_content_length_keeps_its_length(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    payload = b"z" * (10 * MB)
    seen = upstream_saw(await http.put(f"{stack.url}/chat/upload", content=payload))
    assert seen["length"] == 10 * MB
    assert header_values(seen, "content-length") == [str(10 * MB)]
    assert header_values(seen, "transfer-encoding") == []


async def test_a_ten_megabyte_download_streams_in_many_chunks(stack: Stack, http: httpx.AsyncClient) -> None:
    received = chunks = 0
    async with http.stream("GET", f"{stack.url}/chat/big?size={10 * MB}") as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += len(chunk)
            chunks += 1
    assert received == 10 * MB
    assert chunks > 10
    await asyncio.wait_for(stack.gateway.stats_done.wait(), 5)
    stats = stack.gateway.stats[-1]
    assert (stats.bytes_out, stats.completed, stats.status) == (10 * MB, True, 200)
    assert 0 < stats.upstream_latency <= stats.duration


async def test_server_sent_events_arrive_as_they_are_sent(stack: Stack, http: httpx.AsyncClient) -> None:
    arrivals: list[float] = []
    started = time.monotonic()
    async with http.stream("GET", f"{stack.url}/chat/sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 3
    assert arrivals[0] < 0.3, arrivals
    assert arrivals[2] - arrivals[0] > 0.6, arrivals


async def test_a_client_leaving_mid_download_releases_the_upstream_connection(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    async with http.stream("GET", f"{stack.url}/chat/endless") as response:
        async for _ in response.aiter_raw():
            break
    await asyncio.wait_for(stack.log.stream_closed.wait(), 5)
    await asyncio.wait_for(stack.gateway.stats_done.wait(), 5)
    stats = stack.gateway.stats[-1]
    assert (stats.completed, stats.error) == (False, "client_disconnected")
    connector = stack.gateway.client.session.connector
    assert connector is not None
    for _ in range(100):
        if not connector._acquired:  # the pool has no connection checked out
            break
        await asyncio.sleep(0.02)
    assert not connector._acquired


# --- failures -----------------------------------------------------------------------------------------------


async def test_an_upstream_that_is_down_answers_502_without_secrets(
    stack_factory: StackFactory, http: httpx.AsyncClient
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    stack = await stack_factory(upstream=f"http://127.0.0.1:{closed_port}")
    response = await http.get(f"{stack.url}/chat/echo?token=abc")
    assert response.status_code == 502
    assert "channel-credential" not in response.text
    assert "token" not in response.text


async def test_a_hanging_upstream_answers_504_within_the_route_timeout(
    stack_factory: StackFactory, http: httpx.AsyncClient
) -> None:
    stack = await stack_factory(timeout=0.5)
    started = time.monotonic()
    response = await http.get(f"{stack.url}/chat/hang")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert 0.4 < elapsed < 3


# --- websockets ---------------------------------------------------------------------------------------------


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


async def test_open_websockets_leave_the_consoles_http_connections_free(
    stack_factory: StackFactory, http: httpx.AsyncClient
) -> None:
    # An open socket holds its upstream connection for hours: in the HTTP pool, limit_per_host of them (128 by
    # default) would stall every HTTP request to that console and every further socket until the route timeout.
    stack = await stack_factory(limit_per_host=2, timeout=2.0)
    async with contextlib.AsyncExitStack() as sockets:
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
