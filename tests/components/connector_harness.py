"""What the demo-console harnesses (``form_console``, ``oauth_console``, ``seats_console``) share.

A real gateway :class:`AssertionSigner` whose JWKS is served over HTTP, for a console to verify assertions as it
would behind channelgate; and :class:`SharedSecrets`, what several gateway replicas share: one ``agent_secrets``
table (on a database the migrations built) and the vault's keys. Each harness subclasses it with builders for
its connector kind; everything built is closed when :func:`open_replicas` ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectors.context import AgentSecrets, ConnectorContext, IdentityAssertions
from connectors.secret import Secret
from connectors.vault import Vault
from gateway.proxy.assertion import AssertionSigner
from gateway.settings import AssertionSettings, ChannelSettings, DatabaseSettings
from gateway.storage.agent_secrets import AgentSecretRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from tests.components.asgi_server import serve_asgi

ISSUER = "http://gateway.test"
JWKS_PATH = "/.channelgate/jwks.json"


@contextlib.asynccontextmanager
async def gateway_signer() -> AsyncIterator[tuple[AssertionSigner, str]]:
    """A real gateway signer, and the URL its JWKS is served at over HTTP for the block."""
    signer = AssertionSigner(AssertionSettings(), ISSUER)

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(signer.jwks())

    async with serve_asgi(Starlette(routes=[Route(JWKS_PATH, jwks)])) as gateway:
        yield signer, gateway.url + JWKS_PATH


async def read_effects(console_url: str, headers: dict[str, str], subject: str | None = None) -> list[dict[str, Any]]:
    """A demo console's effects log (``GET /_effects``, optionally of one ``subject``), read over HTTP with its
    service credential in ``headers``, as a test outside the console would."""
    params = {"subject": subject} if subject else {}
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{console_url}/_effects", params=params, headers=headers)
    answer.raise_for_status()
    entries: list[dict[str, Any]] = answer.json()["effects"]
    return entries


class _Closable(Protocol):
    async def aclose(self) -> None: ...


@dataclass
class SharedSecrets:
    """What gateway replicas share: one database (``agent_secrets``) and the vault's keys."""

    repository: AgentSecretRepository
    vault: Vault = field(default_factory=lambda: Vault({"k1": os.urandom(32)}, "k1"))
    #: Contexts and connectors built on this database, closed (last first) when :func:`open_replicas` ends.
    built: list[_Closable] = field(default_factory=list)

    def secrets(self, channel: str) -> AgentSecrets:
        return AgentSecrets(channel, self.repository, self.vault)

    def context(
        self,
        channel: str,
        settings: ChannelSettings,
        credential: str,
        assertions: IdentityAssertions | None = None,
    ) -> ConnectorContext:
        """One replica's context for ``channel``, its own ``credential`` loaded as from the vault."""

        async def load() -> Secret:
            return Secret(credential)

        context = ConnectorContext(channel, settings, load, self.secrets(channel), assertions)
        self.built.append(context)
        return context


Shared = TypeVar("Shared", bound=SharedSecrets)


@contextlib.asynccontextmanager
async def open_replicas(database_url: str, kind: type[Shared]) -> AsyncIterator[Shared]:
    """``kind`` on a database migrated to head; whatever was built on it is closed afterwards."""
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    shared = kind(AgentSecretRepository(database.engine))
    try:
        yield shared
    finally:
        for built in reversed(shared.built):
            await built.aclose()
        await database.dispose()
