"""The mail console in its legacy form-login mode, served for real, and ``cookie_jar`` connectors talking to it.

The console runs under uvicorn in this test process on a free loopback port (so a test can move its session
clock and read its effects log); a real gateway :class:`AssertionSigner` signs the assertions of agent pages and
its JWKS is served over HTTP. Connectors keep the agents' console passwords and jars in a real ``agent_secrets``
table (SQLite built by the migrations) sealed by a real vault, so two connectors on one database act as two
gateway replicas.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectors.context import AgentSecrets, ConnectorContext
from connectors.cookie_jar import PASSWORD, CookieJarConnector
from connectors.secret import Secret
from connectors.tickets import TicketDesk
from connectors.vault import Vault
from deploy.demo.consoles import create_app
from deploy.demo.form_login import FormLogin
from gateway.proxy.assertion import AssertionSigner
from gateway.settings import AssertionSettings, CookieJarChannelSettings, DatabaseSettings
from gateway.storage.agent_secrets import AgentSecretRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from tests.components.oauth_console import Served, serve_asgi

CHANNEL = "mail"
ISSUER = "http://gateway.test"
SERVICE_CREDENTIAL = "mail-console-service-credential-3b7e"
#: The console's own accounts: alice, bob and carol, each with a password only the gateway's vault holds.
ACCOUNTS = {"alice": "alice-console-Pw-91c2", "bob": "bob-console-Pw-4d0a", "carol": "carol-console-Pw-77e1"}


class Clock:
    """The console's session clock, which a test moves forward to expire sessions."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class FormConsole:
    served: Served
    login: FormLogin
    signer: AssertionSigner
    clock: Clock

    @property
    def url(self) -> str:
        return self.served.url

    def settings(self, **overrides: Any) -> CookieJarChannelSettings:
        values: dict[str, Any] = {"kind": "cookie_jar", "console_url": self.url, "api_timeout_seconds": 5, **overrides}
        return CookieJarChannelSettings.model_validate(values)

    def assertion(self, agent_id: str, user_name: str) -> str:
        return self.signer.sign(agent_id, user_name, frozenset({"mail-agents"}), CHANNEL, time.time())

    def live_sessions(self, user: str) -> int:
        return len(self.login.sessions.live(user))

    async def effects(self, effect: str | None = None) -> list[dict[str, Any]]:
        """The console's effects log, read over HTTP as the lead's fault tests do."""
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{self.url}/_effects", headers={"Authorization": f"Bearer {SERVICE_CREDENTIAL}"})
        answer.raise_for_status()
        entries: list[dict[str, Any]] = answer.json()["effects"]
        return [e for e in entries if effect is None or e["effect"] == effect]


@contextlib.asynccontextmanager
async def form_console(session_seconds: float = 900) -> AsyncIterator[FormConsole]:
    """The mail console with ``--auth form`` and the accounts above, trusting a real gateway signer."""
    signer = AssertionSigner(AssertionSettings(), ISSUER)

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(signer.jwks())

    async with serve_asgi(Starlette(routes=[Route("/.channelgate/jwks.json", jwks)])) as gateway:
        app = create_app(
            CHANNEL,
            SERVICE_CREDENTIAL,
            f"{gateway.url}/.channelgate/jwks.json",
            ISSUER,
            auth="form",
            accounts=ACCOUNTS,
            session_seconds=session_seconds,
        )
        login: FormLogin = app.state.form_login
        clock = Clock()
        login.sessions.clock = clock
        async with serve_asgi(app) as console:
            yield FormConsole(console, login, signer, clock)


@dataclass
class Replicas:
    """What several gateway replicas share: one database (``agent_secrets``) and the vault's keys."""

    repository: AgentSecretRepository
    vault: Vault = field(default_factory=lambda: Vault({"k1": os.urandom(32)}, "k1"))
    built: list[CookieJarConnector] = field(default_factory=list)
    contexts: list[ConnectorContext] = field(default_factory=list)

    def secrets(self) -> AgentSecrets:
        return AgentSecrets(CHANNEL, self.repository, self.vault)

    async def set_password(self, agent_id: str, user_name: str, password: str | None = None) -> None:
        """What ``channelgate channels set-agent-password`` stores."""
        await self.secrets().put(agent_id, PASSWORD, Secret(password or ACCOUNTS[user_name]))

    def context(self, settings: CookieJarChannelSettings, credential: str = SERVICE_CREDENTIAL) -> ConnectorContext:
        async def load() -> Secret:
            return Secret(credential)

        context = ConnectorContext(CHANNEL, settings, load, self.secrets())
        self.contexts.append(context)
        return context

    def connector(
        self, console: FormConsole, *, credential: str = SERVICE_CREDENTIAL, **settings: Any
    ) -> CookieJarConnector:
        """One replica's connector for the console. Its sense of elapsed time moves with the console's clock, so
        a test that expires the console's sessions is also past the connector's re-login floor."""
        context = self.context(console.settings(**settings), credential)
        assert isinstance(context.settings, CookieJarChannelSettings)
        connector = CookieJarConnector(
            context.channel,
            context.settings,
            context.secrets,
            context.credential,
            context.http,
            tickets=TicketDesk.for_context(context),
            monotonic=lambda: time.monotonic() + console.clock.offset,
        )
        self.built.append(connector)
        return connector


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
        for context in shared.contexts:
            await context.aclose()
        await database.dispose()
