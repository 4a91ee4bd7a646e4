"""Demo consoles with the seats admin API and/or the ticket API, served for real, and connectors talking to them.

Each console runs under uvicorn in this test process on a free loopback port, trusting a real
gateway :class:`AssertionSigner` whose JWKS is served over HTTP. Tests read a console's effects log over HTTP
(``GET /_effects``, service credential) and break it with the console's own fault switch (deploy/demo/faults.py)
or by stopping it. Connectors keep per-agent secrets in a real ``agent_secrets`` table (built by the
migrations) sealed by a real vault; two connectors on one database act as two replicas.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.seats import SeatsConnector
from connectors.static import StaticCredentialConnector
from deploy.demo.consoles import create_app
from deploy.demo.faults import FaultSwitch
from deploy.demo.seats_api import SeatRegistry
from deploy.demo.tickets_api import Ticket
from gateway.proxy.assertion import AssertionSigner
from gateway.settings import SeatsChannelSettings, StaticChannelSettings
from tests.components.asgi_server import AsgiServer, serve_asgi
from tests.components.connector_harness import ISSUER, SharedSecrets, gateway_signer, open_replicas, read_effects

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
    served: AsgiServer
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
        return await read_effects(self.url, self.service_headers(), subject)

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
        await self.served.start()


@contextlib.asynccontextmanager
async def demo_console(
    channel: str,
    *,
    auth: Auth = "static",
    tickets: Sequence[Ticket] | None = None,
    credential: str | None = None,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
) -> AsyncIterator[Console]:
    """``channel``'s console (``auth`` "static" or "seats", with ``tickets`` when given), its gateway's JWKS served;
    ``wrap`` changes how it is served (tests/components/split_answers.py)."""
    credential = credential or (ADMIN_KEY if auth == "seats" else SERVICE_CREDENTIAL)
    async with gateway_signer() as (signer, jwks_url):
        app = create_app(channel, credential, jwks_url, ISSUER, auth=auth, tickets=tickets)
        recorder = Recorder(app if wrap is None else wrap(app))
        async with serve_asgi(recorder) as served:
            yield Console(channel, credential, auth, app, signer, served, recorder)


class Replicas(SharedSecrets):
    """Gateway replicas, each with ``seats`` or ``static`` connectors for the consoles."""

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


def replicas(database_url: str) -> contextlib.AbstractAsyncContextManager[Replicas]:
    """Replicas on a database migrated to head."""
    return open_replicas(database_url, Replicas)
