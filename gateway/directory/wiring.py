"""The directory sync built from the gateway's services (the app's lifespan and the CLI share it)."""

from __future__ import annotations

from gateway.directory.apply import PlanApplier
from gateway.directory.credentials import load_bind_password
from gateway.directory.metrics import DirectoryMetrics
from gateway.directory.settings import LdapSettings
from gateway.directory.store import DirectoryStore
from gateway.directory.sync import DirectorySync
from gateway.services import Services


def open_directory_sync(services: Services, settings: LdapSettings, *, metrics: bool = True) -> DirectorySync:
    store = DirectoryStore(services.database.engine, settings.name)
    applier = PlanApplier(store, services.agents, services.groups, services.killer, services.sessions, services.audit)

    async def password() -> str:
        return await load_bind_password(settings, services.credentials, services.vault)

    return DirectorySync(
        settings,
        store,
        applier,
        services.audit,
        password,
        DirectoryMetrics(services.metrics.registry) if metrics else None,
    )


async def run_directory_sync(services: Services, settings: LdapSettings) -> None:
    """The gateway's lifespan task: the runner of ``[ldap]`` until cancelled."""
    from gateway.directory.runner import DirectoryRunner

    await DirectoryRunner(open_directory_sync(services, settings)).run_forever()
