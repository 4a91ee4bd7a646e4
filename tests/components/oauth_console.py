"""The chat console in its OAuth 2.0 mode, served for real, and ``oauth2`` connectors talking to it.

The console runs under uvicorn in this test process on a free loopback port (so a test can reach its token
store and effects log); the gateway's real :class:`AssertionSigner` signs the subject tokens and its JWKS is
served over HTTP for the console to fetch. Connectors keep their tokens in a real ``agent_secrets`` table (SQLite
built by the migrations) sealed by a real vault, so two connectors on one database act as two replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from connectors.context import AgentSecrets, ConnectorContext
from connectors.oauth2 import OAuth2Connector
from connectors.secret import Secret
from connectors.vault import Vault
from deploy.demo.consoles import create_app
from deploy.demo.effects import Effects
from deploy.demo.oauth_server import OAuthServer
from deploy.demo.tickets_api import Ticket
from gateway.proxy.assertion import AssertionSigner
from gateway.settings import AssertionSettings, DatabaseSettings, OAuth2ChannelSettings
from gateway.storage.agent_secrets import AgentSecretRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from tests.components.ports import LOOPBACK

CHANNEL = "chat"
ISSUER = "http://gateway.test"
CLIENT_ID = "channelgate"
#: Has the characters RFC 6749 §2.3.1's form-encoding exists for (':' would split a Basic pair; '%', '+', ' ').
CLIENT_SECRET = "client:secret%2B+ 7f2c-console"


@dataclass
class Served:
    """One ASGI app under uvicorn; ``stop`` takes it down early (a channel going away mid-test)."""

    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        if not self.task.done():
            self.server.should_exit = True
            await self.task


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp) -> AsyncIterator[Served]:
    # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it
    # every small response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="critical", lifespan="off", ws="websockets-sansio", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    served = Served(f"http://{LOOPBACK}:{port}", server, task)
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        yield served
    finally:
        await served.stop()
        sock.close()


@dataclass
class OAuthConsole:
    served: Served
    oauth: OAuthServer
    signer: AssertionSigner

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def effects(self) -> Effects:
        assert isinstance(self.oauth.effects, Effects)
        return self.oauth.effects

    def settings(self, **overrides: Any) -> OAuth2ChannelSettings:
        values: dict[str, Any] = {
            "kind": "oauth2",
            "token_url": f"{self.url}/oauth/token",
            "revocation_url": f"{self.url}/oauth/revoke",
            "introspection_url": f"{self.url}/oauth/introspect",
            "client_id": CLIENT_ID,
            "api_timeout_seconds": 5,
            **overrides,
        }
        return OAuth2ChannelSettings.model_validate(values)

    def assertion(self, agent_id: str, user_name: str, groups: frozenset[str] = frozenset()) -> str:
        """The per-request assertion the gateway adds to every proxied request."""
        return self.signer.sign(agent_id, user_name, groups, CHANNEL, time.time())


@contextlib.asynccontextmanager
async def oauth_console(
    token_lifetime_seconds: int = 300, tickets: Sequence[Ticket] | None = None
) -> AsyncIterator[OAuthConsole]:
    """The chat console with ``--auth oauth2`` (and the ticket API when ``tickets`` are given), trusting a real
    gateway signer whose JWKS is served over HTTP."""
    signer = AssertionSigner(AssertionSettings(), ISSUER)

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(signer.jwks())

    async with serve_asgi(Starlette(routes=[Route("/.channelgate/jwks.json", jwks)])) as gateway:
        app = create_app(
            CHANNEL,
            CLIENT_SECRET,
            f"{gateway.url}/.channelgate/jwks.json",
            ISSUER,
            auth="oauth2",
            client_id=CLIENT_ID,
            token_lifetime_seconds=token_lifetime_seconds,
            tickets=tickets,
        )
        async with serve_asgi(app) as console:
            yield OAuthConsole(console, app.state.oauth, signer)


@dataclass
class Replicas:
    """What several gateway replicas share: one database (``agent_secrets``) and the vault's keys."""

    repository: AgentSecretRepository
    vault: Vault = field(default_factory=lambda: Vault({"k1": os.urandom(32)}, "k1"))
    built: list[OAuth2Connector] = field(default_factory=list)

    def connector(
        self,
        console: OAuthConsole,
        *,
        secret: str = CLIENT_SECRET,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> OAuth2Connector:
        """One replica's connector for the console, its client secret loaded as from the vault."""

        async def credential() -> Secret:
            return Secret(secret)

        context = ConnectorContext(
            CHANNEL,
            console.settings(**settings),
            credential,
            AgentSecrets(CHANNEL, self.repository, self.vault),
            console.signer,
        )
        connector = OAuth2Connector(context) if clock is None else OAuth2Connector(context, clock=clock)
        self.built.append(connector)
        return connector

    def secrets(self) -> AgentSecrets:
        return AgentSecrets(CHANNEL, self.repository, self.vault)


@contextlib.asynccontextmanager
async def replicas(directory: Path) -> AsyncIterator[Replicas]:
    """A migrated SQLite database in ``directory``; every connector built from it is closed afterwards."""
    url = f"sqlite+aiosqlite:///{directory}/channelgate.db"
    await upgrade_to_head(url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(url)))
    shared = Replicas(AgentSecretRepository(database.engine))
    try:
        yield shared
    finally:
        for connector in shared.built:
            await connector.aclose()
        await database.dispose()
