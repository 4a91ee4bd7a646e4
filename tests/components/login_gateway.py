"""The harness the ``test_login_*`` modules share: one real provider and one in-process gateway per module.

``login_gateway()`` wraps ``test_gateway_harness.deployment`` (echo consoles, SQLite, memory sessions) around a
provider this module owns, so a test can restart it (key rotation, changed accounts) and read the access log
written since a mark. Module-scoped use is safe because every test only adds sessions and records: tests that
move ``services.clock`` put it back, and assertions on the access log look only at records after their mark.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass

import httpx

from gateway.services import Services
from gateway.storage.access_log import AccessRecord
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import (
    STANDARD_ACCOUNTS,
    OidcAccount,
    OidcProvider,
    provider_config,
)

JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
CALLBACK_PATH = "/.channelgate/callback"


@dataclass
class LoginGateway:
    """A running gateway, its provider and helpers to read what the login endpoints did."""

    deployed: Deployment
    provider: OidcProvider

    @property
    def url(self) -> str:
        return self.deployed.url

    @property
    def services(self) -> Services:
        return self.deployed.services

    async def login(self, user: str = "alice", return_to: str = "/") -> httpx.AsyncClient:
        return await self.deployed.login(user, return_to)

    def client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(timeout=10.0)
        self.deployed.clients.append(client)
        return client

    async def audit_mark(self) -> int:
        tail = await self.services.audit._repository.tail(1)
        return (tail[-1].seq or 0) if tail else 0

    async def records_since(self, mark: int, kind: str | None = None) -> list[AccessRecord]:
        records = await self.services.audit._repository.after(mark, limit=1000)
        return [record for record in records if kind is None or record.kind == kind]

    async def agent_id(self, user: str) -> str:
        agent = await self.services.agents.find(user)
        assert agent is not None, user
        return agent.id


class ProviderPool:
    """Providers started for a module and closed with it (the shared fixture is function-scoped)."""

    def __init__(self) -> None:
        self.started: list[OidcProvider] = []

    def start(
        self,
        redirect_uris: Sequence[str],
        *,
        post_logout_redirect_uris: Sequence[str] = (),
        accounts: Sequence[OidcAccount] = STANDARD_ACCOUNTS,
        ttl: Mapping[str, int] | None = None,
    ) -> OidcProvider:
        provider = OidcProvider(
            provider_config(
                redirect_uris, post_logout_redirect_uris=post_logout_redirect_uris, accounts=accounts, ttl=ttl
            )
        )
        self.started.append(provider)
        provider.start()
        return provider

    def close(self) -> None:
        for provider in self.started:
            provider.close()


@contextlib.contextmanager
def provider_pool() -> Iterator[ProviderPool]:
    pool = ProviderPool()
    try:
        yield pool
    finally:
        pool.close()


@contextlib.asynccontextmanager
async def login_gateway(
    pool: ProviderPool, accounts: Sequence[OidcAccount] = STANDARD_ACCOUNTS
) -> AsyncIterator[LoginGateway]:
    """A gateway in this process whose provider allows RP-initiated logout back to the gateway's ``/``."""
    started: list[OidcProvider] = []

    def factory(redirect_uris: Sequence[str], **_: object) -> OidcProvider:
        home = [uri.removesuffix(CALLBACK_PATH) + "/" for uri in redirect_uris]
        started.append(pool.start(redirect_uris, post_logout_redirect_uris=home, accounts=accounts))
        return started[-1]

    async with deployment(factory) as deployed:
        yield LoginGateway(deployed, started[0])


def with_query(url: httpx.URL, **changes: str | None) -> httpx.URL:
    """``url`` with each named query parameter replaced, or removed when its value is None."""
    params = [(key, value) for key, value in url.params.multi_items() if key not in changes]
    params += [(key, value) for key, value in changes.items() if value is not None]
    return url.copy_with(params=httpx.QueryParams(tuple(params)))
