"""The inline proxy against real servers, for tests/integration/test_proxy_end_to_end.py (HTTP) and
test_proxy_websockets.py: a uvicorn upstream that reports what it got, and a small gateway app built from
gateway.proxy (path → route → headers → forward, minus sessions and policy), both on loopback sockets.

``proxy_stacks()`` yields a factory of such stacks, all stopped when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

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
from tests.components.asgi_server import bound_socket, start_server
from tests.components.ports import LOOPBACK

GATEWAY_COOKIES = ("__Host-channelgate",)
#: What the gateway puts in Authorization for the upstream, in place of the client's.
CREDENTIAL = "Bearer channel-credential-s3cret"


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in this event loop; yield its base URL."""
    sock = bound_socket()
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
    server, task = await start_server(config, sock)
    try:
        yield f"http://{LOOPBACK}:{sock.getsockname()[1]}"
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
            session = dict(scope["headers"]).get(b"x-test-session")
            await proxy_websocket(
                websocket,
                ws_url,
                scope["state"]["headers"],
                self.client.websocket_session,
                self.registry,
                agent,
                session=session.decode() if session is not None else None,
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


@contextlib.asynccontextmanager
async def proxy_stacks() -> AsyncIterator[StackFactory]:
    """A factory of stacks (an upstream and a gateway in front of it), all stopped when the block ends.

    The stacks share one upstream client unless ``limit_per_host`` asks for a pool of their own.
    """
    async with contextlib.AsyncExitStack() as exits:
        client = await exits.enter_async_context(UpstreamClient())

        async def make(
            *,
            trusted: Sequence[str] = (),
            timeout: float = 5.0,
            upstream: str | None = None,
            limit_per_host: int | None = None,
        ) -> Stack:
            pool = (
                client
                if limit_per_host is None
                else await exits.enter_async_context(UpstreamClient(limit_per_host=limit_per_host))
            )
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
