"""Demo consoles with the seats admin API and/or the ticket API, served for real, and connectors talking to them.

Each console runs under uvicorn in this test process on a free loopback port, trusting a real
gateway :class:`AssertionSigner` whose JWKS is served over HTTP. Tests read a console's effects log over HTTP
(``GET /_effects``, service credential) and break it with the console's own fault switch (deploy/demo/faults.py)
or by stopping it. Connectors keep per-agent secrets in a real ``agent_secrets`` table (built by the
migrations) sealed by a real vault; two connectors on one database act as two replicas.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.context import AgentSecrets, ConnectorContext
from connectors.seats import SeatsConnector
from connectors.secret import Secret
from connectors.static import StaticCredentialConnector
from connectors.vault import Vault
from deploy.demo.consoles import create_app
from deploy.demo.faults import FaultSwitch
from deploy.demo.seats_api import SeatRegistry
from deploy.demo.tickets_api import Ticket
from gateway.proxy.assertion import AssertionSigner
from gateway.settings import AssertionSettings, DatabaseSettings, SeatsChannelSettings, StaticChannelSettings
from gateway.storage.agent_secrets import AgentSecretRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from tests.components.oauth_console import Served
from tests.components.ports import LOOPBACK

ISSUER = "http://gateway.test"
ADMIN_KEY = "seats-admin-key-5d1e0c7a9b"
SERVICE_CREDENTIAL = "console-service-credential-3a9f"
FALLBACK_QUEUE = "triage"
Auth = Literal["static", "seats"]


def seed(*rows: tuple[str, str | None, str]) -> list[Ticket]:
    """Tickets from ``(id, assignee, status)`` rows; every subject is personal data the receipts must not show."""
    return [
        Ticket(ticket_id, f"Private matter of customer {ticket_id}", assignee, "support", status)
        for ticket_id, assignee, status in rows
    ]


@dataclass
class Recorder:
    """Wraps the console app and notes every HTTP request's method and path, as the console's access log would."""

    app: ASGIApp
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@dataclass
class Console:
    channel: str
    credential: str
    auth: Auth
    app: Starlette
    signer: AssertionSigner
    served: Served
    recorder: Recorder

    def calls(self, method: str, path: str) -> int:
        """How many ``method`` requests reached ``path`` (also those refused or answered from memory)."""
        return self.recorder.calls.count((method, path))

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def faults(self) -> FaultSwitch:
        switch: FaultSwitch = self.app.state.faults
        return switch

    @property
    def seats(self) -> SeatRegistry:
        registry: SeatRegistry = self.app.state.seats
        return registry

    def service_headers(self) -> dict[str, str]:
        """The console's own credential, as its service routes take it."""
        if self.auth == "seats" or self.channel == "chat":
            return {"Authorization": f"Bearer {self.credential}"}
        if self.channel == "phone":
            return {"X-Api-Key": self.credential}
        return {"Authorization": "Basic " + base64.b64encode(f"channelgate:{self.credential}".encode()).decode()}

    def assertion(self, agent_id: str, user_name: str) -> str:
        return self.signer.sign(agent_id, user_name, frozenset(), self.channel, time.time())

    async def effects(self, subject: str | None = None) -> list[dict[str, Any]]:
        params = {"subject": subject} if subject else {}
        async with httpx.AsyncClient(base_url=self.url) as client:
            answer = await client.get("/_effects", params=params, headers=self.service_headers())
        answer.raise_for_status()
        entries: list[dict[str, Any]] = answer.json()["effects"]
        return entries

    async def tickets(self, **query: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.url) as client:
            answer = await client.get("/api/tickets", params={"limit": "200", **query}, headers=self.service_headers())
        answer.raise_for_status()
        tickets: list[dict[str, Any]] = answer.json()["tickets"]
        return tickets

    def seats_settings(self, **overrides: Any) -> SeatsChannelSettings:
        values: dict[str, Any] = {
            "kind": "seats",
            "admin_url": f"{self.url}/admin/",
            "key_check_url": f"{self.url}/api/me",
            "api_timeout_seconds": 5,
            **overrides,
        }
        return SeatsChannelSettings.model_validate(values)

    def tickets_settings(self) -> dict[str, str]:
        return {"url": f"{self.url}/api/", "fallback_queue": FALLBACK_QUEUE}

    async def restart(self) -> None:
        """Serve the same app (same seats, tickets, effects) again on the same port after ``served.stop``."""
        port = int(self.url.rsplit(":", 1)[1])
        self.served = await _serve_at(self.recorder, port)


async def _serve_at(app: ASGIApp, port: int = 0) -> Served:
    """Serve ``app`` under uvicorn on ``port`` (0: a free one) of the loopback address."""
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
    # it every small response waits ~40 ms for a delayed ACK (Nagle's algorithm, RFC 896 / RFC 1122 §4.2.3.2).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.01)
    return Served(f"http://{LOOPBACK}:{sock.getsockname()[1]}", server, task)


@contextlib.asynccontextmanager
async def _served(app: ASGIApp) -> AsyncIterator[Served]:
    served = await _serve_at(app)
    try:
        yield served
    finally:
        await served.stop()


@contextlib.asynccontextmanager
async def demo_console(
    channel: str, *, auth: Auth = "static", tickets: Sequence[Ticket] | None = None, credential: str | None = None
) -> AsyncIterator[Console]:
    """``channel``'s console (``auth`` "static" or "seats", with ``tickets`` when given), its gateway's JWKS served."""
    signer = AssertionSigner(AssertionSettings(), ISSUER)

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(signer.jwks())

    credential = credential or (ADMIN_KEY if auth == "seats" else SERVICE_CREDENTIAL)
    async with _served(Starlette(routes=[Route("/.channelgate/jwks.json", jwks)])) as gateway:
        jwks_url = f"{gateway.url}/.channelgate/jwks.json"
        app = create_app(channel, credential, jwks_url, ISSUER, auth=auth, tickets=tickets)
        recorder = Recorder(app)
        async with _served(recorder) as served:
            console = Console(channel, credential, auth, app, signer, served, recorder)
            try:
                yield console
            finally:
                await console.served.stop()


@dataclass
class Replicas:
    """What gateway replicas share: one database (``agent_secrets``) and the vault's keys."""

    repository: AgentSecretRepository
    vault: Vault = field(default_factory=lambda: Vault({"k1": os.urandom(32)}, "k1"))
    built: list[ConnectorContext] = field(default_factory=list)

    def context(self, channel: str, settings: Any, credential: str) -> ConnectorContext:
        async def load() -> Secret:
            return Secret(credential)

        context = ConnectorContext(channel, settings, load, self.secrets(channel))
        self.built.append(context)
        return context

    def seats(self, console: Console, *, admin_key: str = ADMIN_KEY, **settings: Any) -> SeatsConnector:
        """One replica's seats connector for ``console``, its admin key loaded as from the vault."""
        return SeatsConnector(self.context(console.channel, console.seats_settings(**settings), admin_key))

    def static(
        self, console: Console, inject: str = "bearer", *, credential: str | None = None, **settings: Any
    ) -> StaticCredentialConnector:
        """A static connector for ``console`` with its ticket API configured (and the console's credential, unless
        another ``credential`` is given)."""
        values = {"inject": inject, "tickets": console.tickets_settings(), "api_timeout_seconds": 5, **settings}
        settings_ = StaticChannelSettings.model_validate(values)
        context = self.context(console.channel, settings_, credential or console.credential)
        return StaticCredentialConnector.from_context(context)

    def secrets(self, channel: str) -> AgentSecrets:
        return AgentSecrets(channel, self.repository, self.vault)


@contextlib.asynccontextmanager
async def replicas(database_url: str) -> AsyncIterator[Replicas]:
    """Replicas on a database migrated to head; their HTTP clients are closed afterwards."""
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    shared = Replicas(AgentSecretRepository(database.engine))
    try:
        yield shared
    finally:
        for context in shared.built:
            await context.aclose()
        await database.dispose()
