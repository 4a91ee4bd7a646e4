"""A gateway replica behind a front proxy that asks ``/.channelgate/auth`` (nginx, Envoy, Traefik), for the
forward-auth end-to-end modules.

``fronted_stack`` starts a real oidc-provider and one replica (Redis sessions, PostgreSQL) with the demo consoles;
the proxy's URL is the public one (logins return there, the assertion's issuer names it), forward-auth is on with
a fresh secret, and the policies are the shipped defaults plus ``site.cedar`` in a directory a test rewrites
(reloaded every 0.2 s). The module starts its own proxy in front on ``proxy_port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.components.gateway import ROOT, GatewayStack
from tests.components.oidc_provider import OidcProvider, provider_config
from tests.components.ports import LOOPBACK, free_port
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer

#: Written as ``site.cedar`` before each test: decides nothing.
PLACEHOLDER = '@id("site-placeholder")\nforbid (principal, action, resource) when { false };\n'
PHONE_READ_ONLY = """
@id("phone-read-only")
@reason("The phone console is read-only for agents; supervisors may change it.")
forbid (principal, action == Action::"change", resource in Channel::"phone")
unless { principal in Group::"supervisors" };
"""
PHONE_READ_ONLY_REASON = "The phone console is read-only for agents; supervisors may change it."


@dataclass
class FrontedStack(GatewayStack):
    """The gateway behind a proxy: logins and the assertion's issuer use the proxy's URL."""

    proxy_port: int = 0
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    policy_dir: Path = field(default_factory=Path)

    @property
    def public_url(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy_port}"

    @property
    def redirect_uris(self) -> list[str]:
        return [f"{self.public_url}/.channelgate/callback"]

    @property
    def site_policy(self) -> Path:
        return self.policy_dir / "site.cedar"

    def write_config(self) -> Path:
        path = super().write_config()
        default = ROOT / "policies" / "default"
        with path.open("a", encoding="utf-8") as config:
            config.write(
                f'\n[forward_auth]\nenabled = true\nsecret = "{self.secret}"\n'
                f'\n[policies]\npaths = ["{default}", "{self.policy_dir}"]\nreload_interval_seconds = 0.2\n'
            )
        return path

    def search_log(self, *filters: str) -> list[dict[str, object]]:
        """``channelgate audit search --json`` with ``filters``: the access log's records, newest first."""
        result = self.cli("audit", "search", *filters, "--limit", "200", "--json")
        records: list[dict[str, object]] = json.loads(result.stdout)["records"]
        return records


@contextlib.contextmanager
def fronted_stack(
    redis_server: RedisServer, postgres_server: PostgresServer, policy_dir: Path, local_cache_seconds: float = 0
) -> Iterator[FrontedStack]:
    """The provider and one replica (about 8 s to start); the caller starts its proxy on ``proxy_port``.
    ``local_cache_seconds``: the replica's ``[sessions] local_cache_seconds`` (0: off)."""
    for server in (redis_server, postgres_server):
        if not server.running:
            server.start()
    redis_server.flushall()
    database = f"test_{uuid.uuid4().hex[:16]}"
    (policy_dir / "site.cedar").write_text(PLACEHOLDER)
    stack = FrontedStack(
        issuer="",
        database_url=postgres_server.create_database(database),
        redis_url=redis_server.url,
        policy_dir=policy_dir,
    )
    stack.allocate(replicas=1)
    stack.proxy_port = free_port()
    provider = OidcProvider(provider_config(stack.redirect_uris, post_logout_redirect_uris=[stack.public_url + "/"]))
    mp = pytest.MonkeyPatch()
    # The proxy is the trusted proxy: its X-Forwarded-For names the client (a new table cannot reopen [server]).
    mp.setenv("CHANNELGATE_SERVER__TRUSTED_PROXIES", '["127.0.0.1/32"]')
    mp.setenv("CHANNELGATE_SESSIONS__LOCAL_CACHE_SECONDS", str(local_cache_seconds))
    try:
        provider.start()
        stack.issuer = provider.issuer
        stack.start()
        yield stack
    finally:
        stack.stop()
        provider.close()
        mp.undo()
        postgres_server.drop_database(database)


def reset_site_policy(stack: FrontedStack) -> None:
    """Put the placeholder back and wait past one reload interval, so the next test starts from it."""
    stack.site_policy.write_text(PLACEHOLDER)
    time.sleep(0.5)


async def until_refused(client: httpx.AsyncClient, url: str) -> None:
    """POST to ``url`` until the answer is 403 (a policy file written a moment ago is in force)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await client.post(url, content=b"x=1")).status_code == 403:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} was never refused")


async def until_allowed(client: httpx.AsyncClient, url: str) -> None:
    """POST to ``url`` until the answer is no longer 403."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await client.post(url, content=b"x=1")).status_code != 403:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} stayed refused")


def cookie_header(client: httpx.AsyncClient) -> str:
    """The client's cookies as one Cookie header, for requests sent past the client."""
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


async def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send ``GET path`` byte for byte (httpx would normalise it) and return the status and the whole answer."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    lines = [f"GET {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]), answer
