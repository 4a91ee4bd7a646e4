"""The harness the ``test_gateway_*`` modules share: the real gateway in this process, in front of echo consoles.

``deployment()`` starts three echo consoles (chat, phone, mail), writes a full channelgate.toml with
``tests.components.gateway.config_toml`` for a real oidc-provider, serves it in this process with
``tests.components.inprocess.running_gateway`` (on a socket held from the start) and stores each channel's
credential in the vault.
An echo console stands in for a third-party console: it records every request it gets, so a test can prove
what did (and did not) reach it.
``raw_request`` speaks HTTP/1.1 over a socket, for request targets an HTTP client would tidy up (``..``, ``%2e``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from jose import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from connectors.vault import store_credential
from gateway.services import Services
from gateway.settings import Settings, load_settings
from gateway.timeutil import utcnow
from tests.components.asgi_server import AsgiServer, bound_socket, stop_all
from tests.components.browserless_login import login
from tests.components.gateway import CHANNELS, ROOT, config_toml
from tests.components.inprocess import running_gateway
from tests.components.oidc_provider import DEMO_PASSWORD, OidcProvider, OidcProviderFactory
from tests.components.ports import LOOPBACK

#: gateway/oidc/client.py passes ``aiohttp.BasicAuth`` as ``auth=``, both deprecated since aiohttp 3.14; with
#: ``filterwarnings = error`` the in-process gateway's token redemption would fail. Owned elsewhere; reported.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    query: str = ""

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


class EchoConsole(AsgiServer):
    """A console that records each request: ``/echo`` answers the headers it got, ``/hang`` never answers in
    time, ``/events`` streams Server-Sent Events until the client goes away, ``/ws`` is a WebSocket that echoes
    text (its handshake recorded as a ``WEBSOCKET`` request), anything else is a plain page."""

    def __init__(self, channel: str, hang_seconds: float = 30.0) -> None:
        self.channel = channel
        self.seen: list[SeenRequest] = []
        self.hang_seconds = hang_seconds
        super().__init__(self._echo_app())

    def _echo_app(self) -> Starlette:
        async def any_path(request: Request) -> Response:
            raw_path = request.scope["raw_path"].decode("latin-1")
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
            query = request.scope["query_string"].decode("latin-1")
            self.seen.append(SeenRequest(request.method, raw_path, headers, await request.body(), query))
            if "/hang" in raw_path:
                await asyncio.sleep(self.hang_seconds)
            if "/echo" in raw_path:
                return JSONResponse({"channel": self.channel, "path": raw_path, "headers": headers})
            if raw_path.endswith("/events"):
                return StreamingResponse(_events(), media_type="text/event-stream")
            return HTMLResponse(f"<h1>{self.channel} console</h1><p>{raw_path}</p>")

        async def ws_echo(websocket: WebSocket) -> None:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in websocket.scope["headers"]]
            self.seen.append(SeenRequest("WEBSOCKET", websocket.scope["raw_path"].decode("latin-1"), headers))
            await websocket.accept()
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await websocket.send_text(await websocket.receive_text())

        return Starlette(routes=[WebSocketRoute("/ws", ws_echo), Route("/{path:path}", any_path, methods=ALL_METHODS)])


async def _events() -> AsyncIterator[bytes]:
    """One event every 50 ms, for as long as the client reads."""
    count = 0
    while True:
        count += 1
        yield f"data: {count}\n\n".encode()
        await asyncio.sleep(0.05)


@dataclass
class Deployment:
    url: str
    services: Services
    config_path: Path
    admin_token: str
    consoles: dict[str, EchoConsole]
    credentials: dict[str, str]
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    #: The npm oidc-provider the gateway trusts (its private keys too, for forging tokens in tests).
    provider: OidcProvider | None = None

    async def login(self, user: str, return_to: str = "/") -> httpx.AsyncClient:
        client = await login(self.url, user, DEMO_PASSWORD, return_to=return_to)
        self.clients.append(client)
        return client

    def admin_headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": "application/json"}

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m gateway --config FILE ...`` in a thread, so the gateway in this loop keeps serving."""
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    async def verify_assertion(self, token: str, channel: str) -> dict[str, Any]:
        return await verify_assertion(self.url, token, channel)


async def verify_assertion(gateway_url: str, token: str, channel: str) -> dict[str, Any]:
    """Check the identity assertion as a console would: signature by a key in the gateway's JWKS (at
    ``gateway_url``, also its issuer), this channel as the audience."""
    async with httpx.AsyncClient() as client:
        jwks = (await client.get(gateway_url + "/.channelgate/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(key for key in jwks["keys"] if key["kid"] == kid)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["ES256"], audience=channel, issuer=gateway_url)
    return claims


@contextlib.asynccontextmanager
async def deployment(
    oidc_provider_factory: OidcProviderFactory,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    route_timeout_seconds: float = 5,
    extra_server_toml: str = "",
    extra_sessions_toml: str = "",
    extra_toml: str | Callable[[str], str] = "",
) -> AsyncIterator[Deployment]:
    """The gateway (memory sessions unless ``redis_url``; SQLite file unless ``database_url``) and three consoles.
    ``extra_toml`` may be a function of the provider's issuer, for tables that name it."""
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-it-"))
    gateway_sock = bound_socket()
    url = f"http://{LOOPBACK}:{gateway_sock.getsockname()[1]}"
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Everything bound so far is let go of even when the provider or a console does not start.
            provider = oidc_provider_factory(
                [url + "/.channelgate/callback"], backchannel_logout_uri=url + "/.channelgate/backchannel-logout"
            )
            consoles: dict[str, EchoConsole] = {}
            stack.push_async_callback(stop_all, consoles.values())
            for channel in CHANNELS:
                consoles[channel] = EchoConsole(channel)
            settings = _settings(
                base_dir,
                url,
                provider.issuer,
                {channel: console.port for channel, console in consoles.items()},
                database_url=database_url,
                redis_url=redis_url,
                route_timeout_seconds=route_timeout_seconds,
                extra_server_toml=extra_server_toml,
                extra_sessions_toml=extra_sessions_toml,
                extra_toml=extra_toml,
            )
            for console in consoles.values():
                await console.start()
            services = await stack.enter_async_context(running_gateway(settings.settings, gateway_sock))
            assert services.vault is not None
            credentials = {}
            for channel in CHANNELS:
                credentials[channel] = f"cred-{channel}-{secrets.token_urlsafe(18)}"
                await store_credential(
                    services.credentials, services.vault, channel, credentials[channel].encode(), utcnow()
                )
            deployed = Deployment(
                url, services, settings.path, settings.admin_token, consoles, credentials, provider=provider
            )
            try:
                yield deployed
            finally:
                for client in deployed.clients:
                    await client.aclose()
    finally:
        gateway_sock.close()
        shutil.rmtree(base_dir, ignore_errors=True)


@dataclass(frozen=True)
class _Written:
    """The configuration file a deployment's gateway reads, and the settings loaded from it."""

    path: Path
    settings: Settings
    admin_token: str


def _settings(
    base_dir: Path,
    url: str,
    issuer: str,
    console_ports: dict[str, int],
    *,
    database_url: str | None,
    redis_url: str | None,
    route_timeout_seconds: float,
    extra_server_toml: str,
    extra_sessions_toml: str,
    extra_toml: str | Callable[[str], str],
) -> _Written:
    admin_token = secrets.token_urlsafe(24)
    text = config_toml(
        base_dir=base_dir,
        public_url=url,
        issuer=issuer,
        database_url=database_url or f"sqlite+aiosqlite:///{base_dir / 'channelgate.db'}",
        console_ports=console_ports,
        admin_token=admin_token,
        redis_url=redis_url,
    )
    text = text.replace("timeout_seconds = 5\n", f"timeout_seconds = {route_timeout_seconds}\n")
    text = text.replace("insecure_dev_cookies = true\n", f"insecure_dev_cookies = true\n{extra_server_toml}\n")
    text = text.replace(
        "revocation_ack_timeout_seconds = 2.0\n", f"revocation_ack_timeout_seconds = 2.0\n{extra_sessions_toml}\n"
    )
    extra = extra_toml(issuer) if callable(extra_toml) else extra_toml
    text += f"\n{extra}\n"  # whole tables, appended after the routes
    config_path = base_dir / "channelgate.toml"
    config_path.write_text(text, encoding="utf-8")
    return _Written(config_path, load_settings(config_path, environ={}), admin_token)


@dataclass(frozen=True)
class RawResponse:
    status: int
    head: str
    body: bytes

    @property
    def text(self) -> str:
        return self.head + "\r\n\r\n" + self.body.decode("utf-8", "replace")


async def raw_request(base_url: str, target: str, headers: list[tuple[str, bytes]] | None = None) -> RawResponse:
    """Send ``GET target`` byte for byte (no client-side path clean-up) and read the whole response."""
    url = httpx.URL(base_url)
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        lines = [f"GET {target} HTTP/1.1".encode(), f"Host: {url.host}:{url.port}".encode(), b"Connection: close"]
        lines += [name.encode() + b": " + value for name, value in headers or []]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return RawResponse(int(head.split(b" ", 2)[1]), head.decode("latin-1"), body)


def cookie_of(client: httpx.AsyncClient) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Await ``check()`` until it returns something truthy; fail with its last value after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            assert value, f"still {value!r} after {timeout} s"
            return value
        await asyncio.sleep(0.1)


#: The session stores a forward-auth test runs against: embedded, Redis behind the in-process cache (the settings
#: whose kept answers need no I/O: gateway/forward_auth_protocol.py), and Redis read on every request.
FORWARD_AUTH_STORES = [
    "memory",
    pytest.param("redis-cached", marks=pytest.mark.redis),
    pytest.param("redis", marks=pytest.mark.redis),
]


@contextlib.asynccontextmanager
async def forward_auth_deployment(
    request: pytest.FixtureRequest, oidc_provider_factory: OidcProviderFactory, secret: str
) -> AsyncIterator[Deployment]:
    """``deployment`` with ``[forward_auth]`` on for ``secret``, its sessions in the store ``request.param`` names
    (one of ``FORWARD_AUTH_STORES``)."""
    redis_url = request.getfixturevalue("redis_url") if request.param != "memory" else None
    async with deployment(
        oidc_provider_factory,
        redis_url=redis_url,
        extra_sessions_toml="local_cache_seconds = 5" if request.param == "redis-cached" else "",
        extra_toml=f'[forward_auth]\nenabled = true\nsecret = "{secret}"\n',
    ) as deployed:
        yield deployed
