"""What a SCIM change does beyond its row: deprovisioning, and group changes pushed to live sessions.

The storage calls these after its transaction committed and before it returns, so each effect has happened
before the SCIM response is sent (issue 3: "all sessions on all replicas dead" before the IdP hears 200/204).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

#: The SCIM client (token name) of the request being served; set by ``scim.app`` after authentication.
CLIENT: ContextVar[str] = ContextVar("scim_client", default="unknown")


def actor() -> str:
    return f"scim:{CLIENT.get()}"


class Lifecycle(Protocol):
    async def deactivating(self, agent_id: str, *, conn: AsyncConnection) -> None:
        """The agent is being disabled (``active`` true → false) in ``conn``'s transaction: queue its
        deprovisioning pipeline run in that same transaction (the outbox), so the two commit together."""
        ...

    async def deactivated(self, agent_id: str, *, was_active: bool) -> None:
        """The agent was disabled (``active`` false by PATCH or PUT, committed): kill every session everywhere.

        ``was_active`` is False when the agent was already disabled: the sessions are then killed only if some
        survived (a retry after a failed kill completes it, and Okta's repeated PUTs do not re-audit).
        """
        ...

    async def deactivate(self, agent_id: str) -> None:
        """A request that asked to disable the agent failed before its change committed: disable and deprovision
        it anyway (fail closed)."""
        ...

    async def deleting(self, agent_id: str) -> None:
        """The agent is about to be deleted: deprovision it first."""
        ...

    async def groups_changed(self, agent_ids: frozenset[str]) -> None:
        """These agents' group names changed: update their live sessions."""
        ...
