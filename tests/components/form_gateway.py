"""Real gateways (in this process, on real sockets) in front of the demo mail console in its form-login mode.

``form_deployment()`` writes a full channelgate.toml with ``tests.components.gateway.config_toml`` for a real
npm oidc-provider, turns the ``mail`` channel into ``kind = "cookie_jar"`` pointing at the form-login console
(deploy/demo/form_login.py) and ``chat`` at the demo chat console in its static mode (Bearer credential), and
serves one or more gateway replicas on one database (several need ``redis_url``, so every replica knows every
session). Each console is wrapped in a :class:`Recorder`, so a test can prove what reached it and what it answered.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.cookie_jar import PASSWORD, CookieJarConnector
from connectors.secret import Secret
from connectors.vault import store_credential
from deploy.demo.consoles import create_app
from deploy.demo.form_login import FormLogin
from gateway.services import Services
from gateway.settings import Settings, load_settings
from gateway.timeutil import utcnow
from tests.components.asgi_server import AsgiServer, bound_socket
from tests.components.browserless_login import login
from tests.components.connector_harness import read_effects
from tests.components.echo_gateway import EchoConsole
from tests.components.form_console import ACCOUNTS, SERVICE_CREDENTIAL, Clock
from tests.components.gateway import config_toml
from tests.components.inprocess import running_gateway
from tests.components.oidc_provider import DEMO_PASSWORD, OidcProviderFactory
from tests.components.ports import LOOPBACK

CHAT_CREDENTIAL = "chat-console-credential-" + "9c41" * 4


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int
    body: bytes
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


class Recorder:
    """ASGI middleware in front of a console: reads each request body whole (so it is recorded even when the
    console answers without reading it), then records method, path, body, headers and the status answered.
    ``set_cookie`` (when set) is added to every answer, as a console that sets a preference cookie on each page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[Seen] = []
        self.set_cookie: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.set_cookie is not None:
                    message = {**message, "headers": [*message["headers"], (b"set-cookie", self.set_cookie.encode())]}
            await send(message)

        await self.app(scope, replay, capture)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        self.seen.append(Seen(scope["method"], scope["path"], status, body, headers))

    def to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]


class RunningConsole(AsgiServer):
    """A console behind its :class:`Recorder`, served on a held loopback port."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.recorder = recorder


@dataclass
class FormDeployment:
    urls: list[str]
    replicas: list[Services]
    admin_token: str
    mail: RunningConsole
    chat: RunningConsole
    login_form: FormLogin
    clock: Clock
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def services(self) -> Services:
        return self.replicas[0]

    async def login(self, user: str) -> httpx.AsyncClient:
        """An agent's browser, signed in to the gateway (replica 0) through the real provider."""
        client = await login(self.url, user, DEMO_PASSWORD)
        self.clients.append(client)
        return client

    async def agent_id(self, user: str) -> str:
        agent = await self.services.agents.find(user)
        assert agent is not None, user
        return agent.id

    async def set_password(self, user: str, password: str | None = None) -> None:
        """What ``channelgate channels set-agent-password mail USER`` stores."""
        secrets_ = self.services.connector_contexts["mail"].secrets
        await secrets_.put(await self.agent_id(user), PASSWORD, Secret(password or ACCOUNTS[user]))

    async def set_chat_credential(self, value: str) -> None:
        """What ``channelgate channels set-credential chat`` stores."""
        assert self.services.vault is not None
        await store_credential(self.services.credentials, self.services.vault, "chat", value.encode(), utcnow())

    async def effects(self, effect: str, user: str) -> int:
        """How often the mail console's effects log (``GET /_effects``, read over HTTP) records ``effect``."""
        entries = await read_effects(self.mail.url, {"Authorization": f"Bearer {SERVICE_CREDENTIAL}"}, user)
        return sum(1 for entry in entries if entry["effect"] == effect)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"}


def _mail_channel(console_url: str) -> str:
    return f'[channels.mail]\nkind = "cookie_jar"\nconsole_url = "{console_url}"\napi_timeout_seconds = 3\n'


@contextlib.asynccontextmanager
async def form_deployment(
    oidc_provider_factory: OidcProviderFactory, *, replicas: int = 1, redis_url: str | None = None
) -> AsyncIterator[FormDeployment]:
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-form-"))
    sockets = [bound_socket() for _ in range(replicas)]
    urls = [f"http://{LOOPBACK}:{sock.getsockname()[1]}" for sock in sockets]
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Every socket held so far is let go of even when the provider or a console does not start.
            provider = oidc_provider_factory([urls[0] + "/.channelgate/callback"])
            jwks, issuer = urls[0] + "/.channelgate/jwks.json", urls[0]
            mail_app: Starlette = create_app("mail", SERVICE_CREDENTIAL, jwks, issuer, auth="form", accounts=ACCOUNTS)
            login_form: FormLogin = mail_app.state.form_login
            clock = Clock()
            login_form.sessions.clock = clock
            mail = RunningConsole(Recorder(mail_app))
            stack.push_async_callback(mail.stop)
            chat = RunningConsole(Recorder(create_app("chat", CHAT_CREDENTIAL, jwks, issuer)))
            stack.push_async_callback(chat.stop)
            phone = EchoConsole("phone")
            stack.push_async_callback(phone.stop)
            admin_token = secrets.token_urlsafe(24)
            settings = _settings(base_dir, urls[0], provider.issuer, mail, chat, phone, admin_token, redis_url)
            for console in (mail, chat, phone):
                await console.start()
            running: list[Services] = []
            for sock in sockets:
                services = await stack.enter_async_context(running_gateway(settings, sock))
                running.append(services)
                # Time passes for the gateway as for the console: a test that expires console sessions by moving
                # the console's clock is also past the connector's re-login floor.
                connector = services.connectors["mail"]
                assert isinstance(connector, CookieJarConnector)
                connector.monotonic = lambda: time.monotonic() + clock.offset
            deployed = FormDeployment(urls, running, admin_token, mail, chat, login_form, clock)
            assert running[0].vault is not None
            await store_credential(
                running[0].credentials, running[0].vault, "mail", SERVICE_CREDENTIAL.encode(), utcnow()
            )
            await deployed.set_chat_credential(CHAT_CREDENTIAL)
            try:
                yield deployed
            finally:
                for client in deployed.clients:
                    await client.aclose()
    finally:
        for sock in sockets:
            sock.close()
        shutil.rmtree(base_dir, ignore_errors=True)


def _settings(
    base_dir: Path,
    url: str,
    issuer: str,
    mail: AsgiServer,
    chat: AsgiServer,
    phone: AsgiServer,
    admin_token: str,
    redis_url: str | None,
) -> Settings:
    """The deployment's configuration file, written and loaded: mail signs in through its login form."""
    text = config_toml(
        base_dir=base_dir,
        public_url=url,
        issuer=issuer,
        database_url=f"sqlite+aiosqlite:///{base_dir / 'channelgate.db'}",
        console_ports={"chat": chat.port, "phone": phone.port, "mail": mail.port},
        admin_token=admin_token,
        redis_url=redis_url,
    )
    static_mail = '[channels.mail]\ninject = "basic"\n'
    assert static_mail in text
    text = text.replace(static_mail, _mail_channel(mail.url))
    config_path = base_dir / "channelgate.toml"
    config_path.write_text(text, encoding="utf-8")
    return load_settings(config_path, environ={})
