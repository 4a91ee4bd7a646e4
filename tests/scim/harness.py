"""The gateway in this process with SCIM at /scim/v2, SQLite, memory sessions and no provider behind it.

SCIM needs no login, so the OIDC issuer is a placeholder nothing ever contacts. Tests that need a logged-in
agent use ``tests.components.login_gateway`` (real npm oidc-provider) instead.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.services import Services
from gateway.settings import Settings
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow
from tests.components.asgi_server import bound_socket
from tests.components.inprocess import running_gateway
from tests.components.ports import LOOPBACK

SCIM_JSON = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


@dataclass
class ScimGateway:
    url: str
    services: Services
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def scim_url(self) -> str:
        return self.url + "/scim/v2"

    async def token(self, name: str = "okta") -> str:
        return await self.services.scim_tokens.create(name, utcnow())

    async def client(self, name: str = "okta", token: str | None = None) -> httpx.AsyncClient:
        """A client of /scim/v2 authenticated as a new SCIM client ``name`` (or with ``token``)."""
        token = token or await self.token(name)
        client = httpx.AsyncClient(
            base_url=self.scim_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": SCIM_JSON, "Accept": SCIM_JSON},
            timeout=10.0,
        )
        self.clients.append(client)
        return client

    async def audit_mark(self) -> int:
        await self.services.audit.flush()
        tail = await self.services.audit._repository.tail(1)
        return (tail[-1].seq or 0) if tail else 0

    async def records_since(self, mark: int, kind: str | None = None) -> list[AccessRecord]:
        await self.services.audit.flush()
        records = await self.services.audit._repository.after(mark, limit=1000)
        return [record for record in records if kind is None or record.kind == kind]


def scim_settings(base_dir: Path, url: str, database_url: str | None = None) -> Settings:
    return Settings.model_validate(
        {
            "server": {"host": LOOPBACK, "public_url": url, "insecure_dev_cookies": True},
            "database": {"url": database_url or f"sqlite+aiosqlite:///{base_dir / 'channelgate.db'}"},
            "oidc": {"issuer": f"http://{LOOPBACK}:9/unused", "client_id": "unused", "client_secret": "unused"},
        }
    )


@contextlib.asynccontextmanager
async def scim_gateway(database_url: str | None = None) -> AsyncIterator[ScimGateway]:
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-scim-"))
    sock = bound_socket()
    url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    try:
        async with running_gateway(scim_settings(base_dir, url, database_url), sock) as services:
            running = ScimGateway(url, services)
            try:
                yield running
            finally:
                for client in running.clients:
                    await client.aclose()
    finally:
        sock.close()
        shutil.rmtree(base_dir, ignore_errors=True)
