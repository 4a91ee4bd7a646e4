"""The chat console in its OAuth 2.0 mode, served for real, and ``oauth2`` connectors talking to it.

The console runs under uvicorn in this test process on a free loopback port (so a test can reach its token
store and effects log); the gateway's real :class:`AssertionSigner` signs the subject tokens and its JWKS is
served over HTTP for the console to fetch. Connectors keep their tokens in a real ``agent_secrets`` table (SQLite
built by the migrations) sealed by a real vault, so two connectors on one database act as two replicas.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from connectors.base import AgentRef, StepContext, UpstreamRequest
from connectors.context import AgentSecrets
from connectors.oauth2 import OAuth2Connector
from deploy.demo.consoles import create_app
from deploy.demo.effects import Effects
from deploy.demo.oauth_server import OAuthServer
from deploy.demo.tickets_api import Ticket
from gateway.proxy.assertion import AssertionSigner
from gateway.settings import OAuth2ChannelSettings
from tests.components.asgi_server import AsgiServer, serve_asgi
from tests.components.connector_harness import ISSUER, SharedSecrets, gateway_signer, open_replicas

CHANNEL = "chat"
CLIENT_ID = "channelgate"
#: Has the characters RFC 6749 §2.3.1's form-encoding exists for (':' would split a Basic pair; '%', '+', ' ').
CLIENT_SECRET = "client:secret%2B+ 7f2c-console"


@dataclass
class OAuthConsole:
    served: AsgiServer
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
    token_lifetime_seconds: int = 300,
    tickets: Sequence[Ticket] | None = None,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
) -> AsyncIterator[OAuthConsole]:
    """The chat console with ``--auth oauth2`` (and the ticket API when ``tickets`` are given), trusting a real
    gateway signer whose JWKS is served over HTTP; ``wrap`` changes how it is served (tests/components/
    split_answers.py)."""
    async with gateway_signer() as (signer, jwks_url):
        app = create_app(
            CHANNEL,
            CLIENT_SECRET,
            jwks_url,
            ISSUER,
            auth="oauth2",
            client_id=CLIENT_ID,
            token_lifetime_seconds=token_lifetime_seconds,
            tickets=tickets,
        )
        async with serve_asgi(app if wrap is None else wrap(app)) as console:
            yield OAuthConsole(console, app.state.oauth, signer)


class Replicas(SharedSecrets):
    """Gateway replicas, each with an ``oauth2`` connector for the chat console."""

    def connector(
        self,
        console: OAuthConsole,
        *,
        secret: str = CLIENT_SECRET,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> OAuth2Connector:
        """One replica's connector for the console, its client secret loaded as from the vault."""
        context = self.context(CHANNEL, console.settings(**settings), secret, console.signer)
        connector = OAuth2Connector(context) if clock is None else OAuth2Connector(context, clock=clock)
        self.built.append(connector)
        return connector

    def secrets(self, channel: str = CHANNEL) -> AgentSecrets:
        return super().secrets(channel)


def replicas(directory: Path) -> contextlib.AbstractAsyncContextManager[Replicas]:
    """Replicas on a migrated SQLite database in ``directory``."""
    return open_replicas(f"sqlite+aiosqlite:///{directory}/channelgate.db", Replicas)


# What the connector tests share (tests/integration/test_connector_oauth2*.py) ----------------------------------

ALICE = AgentRef(agent_id="agent-alice", user_name="alice")
BOB = AgentRef(agent_id="agent-bob", user_name="bob")
CTX = StepContext(idempotency_key="run-1:chat:revoke")


class Clock:
    """Wall time plus a shift the test moves, for the connector's expiry decisions only: the console keeps real
    time, and subject tokens are always signed at real time."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


async def prepared(connector: OAuth2Connector, agent: AgentRef = ALICE) -> UpstreamRequest:
    request = UpstreamRequest("GET", "http://console.internal/")
    await connector.prepare(agent, request)
    return request


def bearer(request: UpstreamRequest) -> str:
    scheme, _, token = (request.header("Authorization") or "").partition(" ")
    assert scheme == "Bearer"
    return token
