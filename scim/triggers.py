"""The gateway's ``Lifecycle``: SCIM deactivation → ``SessionKiller.deprovision``; memberships → sessions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from gateway.deprovision.kill import SessionKiller
from gateway.sessions.base import SessionStore
from gateway.storage.groups import GroupRepository
from scim.lifecycle import actor

log = logging.getLogger("channelgate.scim")


@runtime_checkable
class _GroupUpdates(Protocol):
    async def update_agent_groups(self, agent_id: str, groups: frozenset[str]) -> None: ...


class GatewayLifecycle:
    def __init__(
        self,
        killer: SessionKiller,
        sessions: SessionStore,
        groups: GroupRepository,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._killer = killer
        self._sessions = sessions
        self._groups = groups
        self._clock = clock

    async def deactivated(self, agent_id: str, *, was_active: bool) -> None:
        if not was_active and not await self._sessions.sessions_of(agent_id, self._clock()):
            return
        await self._killer.deprovision(agent_id, reason="deactivated by SCIM", actor=actor(), source="scim")

    async def deleting(self, agent_id: str) -> None:
        await self._killer.deprovision(agent_id, reason="deleted by SCIM", actor=actor(), source="scim")

    async def groups_changed(self, agent_ids: frozenset[str]) -> None:
        """Push the new group names to the agents' live sessions.

        Interim, until every session store has ``update_agent_groups`` (being added beside this): a store
        without it has those agents' sessions revoked instead, so no session keeps a group it lost (fail closed).
        """
        for agent_id in sorted(agent_ids):
            if isinstance(self._sessions, _GroupUpdates):
                await self._sessions.update_agent_groups(agent_id, await self._groups.names_of(agent_id))
            else:
                log.warning("session store cannot update groups: revoking the sessions of agent %s", agent_id)
                await self._sessions.revoke_agent(agent_id)
