"""channelgate's core services (SQLite, memory sessions) with the directory sync of a test ``slapd``, no HTTP."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.directory.sync import DirectorySync
from gateway.directory.wiring import open_directory_sync
from gateway.services import Services, open_core
from gateway.settings import Settings
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent
from gateway.storage.migrate import upgrade_to_head
from tests.components.ldap_server import GROUPS, PEOPLE, SYNC_DN, SYNC_PASSWORD, LdapServer
from tests.components.ports import LOOPBACK

AGENTS_GROUP = f"cn=agents,{GROUPS}"


def ldap_section(server: LdapServer, **overrides: Any) -> dict[str, Any]:
    """An ``[ldap]`` table for ``server``: people and groups, ``cn=agents`` as the agents group."""
    return {
        "url": server.url,
        "bind_dn": SYNC_DN,
        "bind_password": SYNC_PASSWORD,
        "users_base": PEOPLE,
        "groups_base": GROUPS,
        "agents_group": AGENTS_GROUP,
        "timeout_seconds": 5,
        "quarantine": {"max_share": 0.5, "min_agents": 5},
        **overrides,
    }


def feed_toml(server: LdapServer, *, max_share: float, min_agents: int | None = None) -> str:
    """``[ldap]`` tables for a whole gateway (``deployment(extra_toml=...)``): the change feed carries the
    changes (periodic syncs rare, feed batches of 10 ms)."""
    floor = "" if min_agents is None else f"min_agents = {min_agents}\n"
    return f"""
[ldap]
url = "{server.url}"
bind_dn = "{SYNC_DN}"
bind_password = "{SYNC_PASSWORD}"
users_base = "{PEOPLE}"
groups_base = "{GROUPS}"
agents_group = "{AGENTS_GROUP}"
incremental_interval_seconds = 300
full_interval_seconds = 3600
feed_batch_seconds = 0.01

[ldap.quarantine]
max_share = {max_share}
{floor}"""


def core_settings(base_dir: Path, ldap: dict[str, Any], database_url: str | None = None) -> Settings:
    return Settings.model_validate(
        {
            "server": {"host": LOOPBACK, "public_url": "http://127.0.0.1:9", "insecure_dev_cookies": True},
            "database": {"url": database_url or f"sqlite+aiosqlite:///{base_dir / 'channelgate.db'}"},
            "oidc": {"issuer": f"http://{LOOPBACK}:9/unused", "client_id": "unused", "client_secret": "unused"},
            "deprovision": {"guard": {"enabled": False}},
            "ldap": ldap,
        }
    )


@dataclass
class LdapStack:
    services: Services
    sync: DirectorySync
    base_dir: Path

    async def agent(self, user_name: str) -> Agent:
        found = await self.services.agents.find_by_user_name(user_name)
        assert found is not None, f"no agent {user_name!r}"
        return found

    async def active(self) -> set[str]:
        """userNames of the live, active agents."""
        return {agent.user_name for agent in await self.services.agents.list(limit=100000) if agent.active}

    async def records(self, kind: str = "ldap") -> list[AccessRecord]:
        await self.services.audit.flush()
        found = await self.services.audit.repository.after(0, limit=100000)
        return [record for record in found if record.kind == kind]


@contextlib.asynccontextmanager
async def ldap_stack(
    server: LdapServer, *, database_url: str | None = None, **overrides: Any
) -> AsyncIterator[LdapStack]:
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-ldap-"))
    settings = core_settings(base_dir, ldap_section(server, **overrides), database_url)
    try:
        await upgrade_to_head(settings.database.url.get_secret_value())
        services = open_core(settings)
        services.audit.start()
        try:
            assert settings.ldap is not None
            yield LdapStack(services, open_directory_sync(services, settings.ldap), base_dir)
        finally:
            await services.close()
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
