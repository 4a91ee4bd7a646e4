"""What the fault tests share: a gateway stack of real processes per module, agents to sign in, small probes.

Each module starts one ``GatewayStack`` (gateway replicas, demo consoles, an oidc-provider) and reuses it across
its tests, since starting one costs seconds; a test leaves the dependency it broke running again. Agents are
one-off accounts (``agent01`` ...), so a test that deprovisions one never disturbs another test.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

import httpx

from tests.components.browserless_login import login
from tests.components.gateway import GatewayStack
from tests.components.oidc_provider import DEMO_PASSWORD, STANDARD_ACCOUNTS, OidcAccount, OidcProvider, provider_config

JSON = {"Accept": "application/json"}

#: One-off chat agents: a test that deprovisions one takes its own.
AGENTS: tuple[OidcAccount, ...] = tuple(
    OidcAccount(
        sub=f"fault-agent-{number:04d}",
        username=f"agent{number:02d}",
        password=DEMO_PASSWORD,
        email=f"agent{number:02d}@example.com",
        name=f"Agent {number:02d}",
        groups=("chat-agents",),
    )
    for number in range(1, 21)
)


@contextlib.contextmanager
def running_stack(
    *,
    database_url: str,
    redis_url: str | None,
    replicas: int,
    upstreams: dict[str, str] | None = None,
    route_timeout_seconds: float = 5,
) -> Iterator[GatewayStack]:
    """An oidc-provider and a started ``GatewayStack`` (replicas as child processes), stopped afterwards."""
    stack = GatewayStack(
        issuer="",
        database_url=database_url,
        redis_url=redis_url,
        upstreams=dict(upstreams or {}),
        route_timeout_seconds=route_timeout_seconds,
    )
    stack.allocate(replicas=replicas)
    with OidcProvider(provider_config(stack.redirect_uris, accounts=STANDARD_ACCOUNTS + AGENTS)) as provider:
        stack.issuer = provider.issuer
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
            shutil.rmtree(stack.base_dir, ignore_errors=True)


async def sign_in(stack: GatewayStack, user: str) -> httpx.AsyncClient:
    """A client holding a new gateway session of ``user``; the caller closes it. The provider sends every login
    back to replica 0 (the public URL); the cookie is good on every replica (one host, 127.0.0.1)."""
    return await login(stack.url(0), user, DEMO_PASSWORD, return_to="/chat/")


async def admin_post(stack: GatewayStack, path: str, body: dict[str, Any], replica: int = 0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await client.post(
            stack.url(replica) + "/.channelgate/admin" + path,
            json=body,
            headers={"Authorization": f"Bearer {stack.admin_token}", **JSON},
        )


async def admin_get(stack: GatewayStack, path: str, replica: int = 0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await client.get(
            stack.url(replica) + "/.channelgate/admin" + path,
            headers={"Authorization": f"Bearer {stack.admin_token}", **JSON},
        )


async def status_of(stack: GatewayStack, path: str, replica: int = 0) -> int:
    """The status of an anonymous GET (readiness, health)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        return (await client.get(stack.url(replica) + path)).status_code


def no_traceback(response: httpx.Response) -> None:
    """A failure is a clean answer: a JSON error with a code and a message, never a stack trace."""
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text[:500]
    body = response.json()
    assert body["error"] and body["message"] and body["request_id"], body
