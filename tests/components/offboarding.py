"""An offboarding deployment for the deprovisioning pipeline's tests: three demo consoles speaking the issue-4
protocols, in this process (so tests can read their effects, flip their faults, stop and restart them), and a
channelgate configured with one connector kind each:

- ``chat``: ``kind = "oauth2"`` (RFC 8693 token exchange, RFC 7009 revocation, RFC 7662 introspection) with a
  ticket API;
- ``phone``: ``kind = "seats"`` (seats admin REST API, ``remove = "delete"``);
- ``mail``: ``kind = "cookie_jar"`` (legacy form login) with a ticket API.

The gateway itself runs either in this process (``OffboardingStack.start_gateway``) or as a child process
(``channelgate serve``, for SIGKILL tests) on the same configuration file and SQLite database.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette

from deploy.demo.consoles import create_app as console_app
from deploy.demo.faults import FaultSwitch
from deploy.demo.tickets_api import Ticket
from tests.components.asgi_server import AsgiServer
from tests.components.ports import LOOPBACK, free_port

AuthMode = Literal["oauth2", "seats", "form"]
#: channel → (console mode, has a ticket API)
CHANNEL_MODES: dict[str, tuple[AuthMode, bool]] = {
    "chat": ("oauth2", True),
    "phone": ("seats", False),
    "mail": ("form", True),
}
PASSWORD = "legacy-pass"  # the demo mail console's test accounts


@dataclass
class LiveConsole:
    """One demo console served in this process (``AsgiServer``: ``stop`` makes connections be refused, ``start``
    serves the same app, with the same state, on the same port again)."""

    channel: str
    mode: AuthMode
    credential: str
    server: AsgiServer

    @property
    def app(self) -> Starlette:
        app = self.server.app
        assert isinstance(app, Starlette)
        return app

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def faults(self) -> FaultSwitch:
        switch: FaultSwitch = self.app.state.faults
        return switch

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def effects(self) -> list[dict[str, Any]]:
        """The console's effects log (``GET /_effects``), read over HTTP with its service credential."""
        async with httpx.AsyncClient() as http:
            response = await http.get(self.url + "/_effects", headers={"Authorization": f"Bearer {self.credential}"})
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()["effects"]
        return entries


@dataclass
class OffboardingStack:
    base_dir: Path
    gateway_port: int
    admin_token: str
    consoles: dict[str, LiveConsole]
    config_path: Path
    database_path: Path
    extra_toml: str = ""
    agents: dict[str, str] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://{LOOPBACK}:{self.gateway_port}"

    def add_agents(self, user_names: Sequence[str], managers: Mapping[str, str] | None = None) -> dict[str, str]:
        """Directory agents (as SCIM provisions them), with managers by userName; returns userName → id."""
        managers = managers or {}
        now = "2026-12-04 12:00:00.000000"
        with contextlib.closing(sqlite3.connect(self.database_path)) as db, db:
            for name in user_names:
                self.agents[name] = str(uuid.uuid4())
            db.executemany(
                "INSERT INTO agents (id, user_name, user_name_key, email, manager_id, active, source, attributes,"
                " version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, 'scim', '{}', 1, ?, ?)",
                [
                    (self.agents[n], n, n.lower(), f"{n}@example.com", self.agents.get(managers.get(n, "")), now, now)
                    for n in user_names
                ],
            )
        return {n: self.agents[n] for n in user_names}


def _tickets(open_for: Mapping[str, int]) -> list[Ticket]:
    return [
        Ticket(id=f"T-{user}-{n}", subject=f"customer case {n}", assignee=user)
        for user, count in open_for.items()
        for n in range(count)
    ]


def gateway_config(stack_dir: Path, gateway_port: int, admin_token: str, urls: Mapping[str, str]) -> str:
    """channelgate.toml for the three issue-4 consoles at ``urls`` (chat, phone, mail); SQLite in ``stack_dir``."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = stack_dir / "assertion.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    vault_key = base64.b64encode(secrets.token_bytes(32)).decode()
    chat, phone, mail = urls["chat"], urls["phone"], urls["mail"]
    return f"""
[server]
host = "{LOOPBACK}"
port = {gateway_port}
public_url = "http://{LOOPBACK}:{gateway_port}"
insecure_dev_cookies = true

[database]
url = "sqlite+aiosqlite:///{stack_dir / "channelgate.db"}"

[sessions]
store = "memory"
revocation_ack_timeout_seconds = 2.0

[oidc]
# Never contacted: these tests deprovision agents provisioned by the directory, nobody logs in.
issuer = "http://{LOOPBACK}:9"
client_id = "channelgate"
client_secret = "unused-in-these-tests"

[assertion]
private_key_files = ["{key_file}"]

[vault]
active_key = "k1"
keys = {{ k1 = "{vault_key}" }}

[admin]
tokens = ["{admin_token}"]

[channels.chat]
kind = "oauth2"
token_url = "{chat}/oauth/token"
revocation_url = "{chat}/oauth/revoke"
introspection_url = "{chat}/oauth/introspect"
client_id = "channelgate"
api_timeout_seconds = 2

[channels.chat.tickets]
url = "{chat}/api/"
fallback_queue = "chat-unassigned"

[channels.phone]
kind = "seats"
admin_url = "{phone}/admin/"
remove = "delete"
api_timeout_seconds = 2

[channels.mail]
kind = "cookie_jar"
console_url = "{mail}"
api_timeout_seconds = 2

[channels.mail.tickets]
url = "{mail}/api/"
fallback_queue = "mail-unassigned"
"""


@contextlib.asynccontextmanager
async def offboarding_stack(
    open_tickets: Mapping[str, int], accounts: Sequence[str], *, deprovision_toml: str = ""
) -> AsyncIterator[OffboardingStack]:
    """Consoles up, configuration written, database migrated, channel credentials stored (through the CLI's own
    code path); the gateway is not started (tests start it in-process or as a child process)."""
    from connectors.vault import store_credential
    from gateway.services import open_core
    from gateway.settings import load_settings
    from gateway.storage.migrate import upgrade_to_head
    from gateway.timeutil import utcnow

    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-offboarding-"))
    gateway_port = free_port()
    issuer = f"http://{LOOPBACK}:{gateway_port}"
    consoles: dict[str, LiveConsole] = {}
    try:  # each console's socket is let go of even when a later step fails before the stack is handed out
        for channel, (mode, has_tickets) in CHANNEL_MODES.items():
            credential = f"{channel}-service-{secrets.token_urlsafe(16)}"
            app = console_app(
                channel,
                credential,
                issuer + "/.channelgate/jwks.json",
                issuer,
                auth=mode,
                tickets=_tickets(open_tickets) if has_tickets else None,
                accounts={user: PASSWORD for user in accounts} if mode == "form" else None,
            )
            consoles[channel] = LiveConsole(channel, mode, credential, AsgiServer(app))
        admin_token = secrets.token_urlsafe(24)
        config_path = base_dir / "channelgate.toml"
        config_path.write_text(
            gateway_config(base_dir, gateway_port, admin_token, {c: console.url for c, console in consoles.items()})
            + f"\n[deprovision]\n{deprovision_toml}\n",
            encoding="utf-8",
        )
        settings = load_settings(config_path, environ={})
        await upgrade_to_head(settings.database.url.get_secret_value())
        services = open_core(settings)
        try:
            assert services.vault is not None
            for channel, console in consoles.items():
                await store_credential(
                    services.credentials, services.vault, channel, console.credential.encode(), utcnow()
                )
        finally:
            await services.close()
        for console in consoles.values():
            await console.start()
        yield OffboardingStack(base_dir, gateway_port, admin_token, consoles, config_path, base_dir / "channelgate.db")
    finally:
        for console in consoles.values():
            await console.stop()
