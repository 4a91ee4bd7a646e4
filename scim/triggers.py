"""The gateway's ``Lifecycle``: SCIM deactivation → ``SessionKiller.deprovision``; memberships → sessions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.deprovision.kill import SessionKiller
from gateway.sessions.base import SessionStore
from gateway.storage.agents import AgentRepository
from gateway.storage.groups import GroupRepository
from scim.lifecycle import actor

log = logging.getLogger("channelgate.scim")


class GatewayLifecycle:
    def __init__(
        self,
        killer: SessionKiller,
        sessions: SessionStore,
        groups: GroupRepository,
        agents: AgentRepository,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._killer = killer
        self._sessions = sessions
        self._groups = groups
        self._agents = agents
        self._clock = clock

    async def deactivating(self, agent_id: str, *, conn: AsyncConnection) -> None:
        # The sessions end now, not after the commit: the transaction may wait its turn behind others (an IdP
        # deactivating many agents at once); ``deactivated`` ends them again once the disable committed.
        await self._killer.end_sessions_first(agent_id)
        agent = await self._agents.get(agent_id, conn=conn)
        if agent is not None:
            await self._killer.disabled_in(
                conn, agent, was_active=True, source="scim", actor=actor(), reason="deactivated by SCIM"
            )

    async def deactivated(self, agent_id: str, *, was_active: bool) -> None:
        if not was_active and not await self._sessions.sessions_of(agent_id, self._clock()):
            return
        await self._killer.kill_sessions(agent_id, reason="deactivated by SCIM", actor=actor(), source="scim")

    async def deactivate(self, agent_id: str) -> None:
        await self._killer.deprovision(
            agent_id, reason="deactivated by SCIM (the request failed)", actor=actor(), source="scim"
        )

    async def deleting(self, agent_id: str) -> None:
        await self._killer.deprovision(agent_id, reason="deleted by SCIM", actor=actor(), source="scim")

    async def groups_changed(self, agent_ids: frozenset[str]) -> None:
        """Push the new group names to the agents' live sessions: the next request of each is decided on them
        (ASVS 8.3.2), on every replica, without a database read on the request path."""
        for agent_id in sorted(agent_ids):
            await self._sessions.update_agent_groups(agent_id, await self._groups.names_of(agent_id))
