"""The mail console in its legacy form-login mode, served for real, and ``cookie_jar`` connectors talking to it.

The console runs under uvicorn in this test process on a free loopback port (so a test can move its session
clock and read its effects log); a real gateway :class:`AssertionSigner` signs the assertions of agent pages and
its JWKS is served over HTTP. Connectors keep the agents' console passwords and jars in a real ``agent_secrets``
table (SQLite built by the migrations) sealed by a real vault, so two connectors on one database act as two
gateway replicas.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.context import AgentSecrets
from connectors.cookie_jar import PASSWORD, CookieJarConnector
from connectors.secret import Secret
from deploy.demo.consoles import create_app
from deploy.demo.form_login import FormLogin
from gateway.proxy.assertion import AssertionSigner
from gateway.settings import CookieJarChannelSettings
from tests.components.asgi_server import AsgiServer, serve_asgi
from tests.components.connector_harness import ISSUER, SharedSecrets, gateway_signer, open_replicas, read_effects

CHANNEL = "mail"
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
    served: AsgiServer
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
        entries = await read_effects(self.url, {"Authorization": f"Bearer {SERVICE_CREDENTIAL}"})
        return [e for e in entries if effect is None or e["effect"] == effect]


@contextlib.asynccontextmanager
async def form_console(session_seconds: float = 900) -> AsyncIterator[FormConsole]:
    """The mail console with ``--auth form`` and the accounts above, trusting a real gateway signer."""
    async with gateway_signer() as (signer, jwks_url):
        app = create_app(
            CHANNEL,
            SERVICE_CREDENTIAL,
            jwks_url,
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


class Replicas(SharedSecrets):
    """Gateway replicas, each with a ``cookie_jar`` connector for the mail console."""

    def secrets(self, channel: str = CHANNEL) -> AgentSecrets:
        return super().secrets(channel)

    async def set_password(self, agent_id: str, user_name: str, password: str | None = None) -> None:
        """What ``channelgate channels set-agent-password`` stores."""
        await self.secrets().put(agent_id, PASSWORD, Secret(password or ACCOUNTS[user_name]))

    def connector(
        self, console: FormConsole, *, credential: str = SERVICE_CREDENTIAL, **settings: Any
    ) -> CookieJarConnector:
        """One replica's connector for the console, built as ``from_context`` builds it. Its sense of elapsed time
        moves with the console's clock, so a test that expires the console's sessions is also past the
        connector's re-login floor."""
        connector = CookieJarConnector.from_context(self.context(CHANNEL, console.settings(**settings), credential))
        connector.monotonic = lambda: time.monotonic() + console.clock.offset
        self.built.append(connector)
        return connector


def replicas(directory: Path) -> contextlib.AbstractAsyncContextManager[Replicas]:
    """Replicas on a migrated SQLite database in ``directory``."""
    return open_replicas(f"sqlite+aiosqlite:///{directory}/channelgate.db", Replicas)
