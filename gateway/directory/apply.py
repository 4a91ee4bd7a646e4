"""Carrying out a plan: agents and groups written, disables through the deprovisioning pipeline, every change
in the access log (kind ``ldap``).

A disable is ``SessionKiller.deprovision`` with source ``ldap``: the agent is disabled, its pipeline run queued
and every session on every replica ended before the call returns. A reactivation sets the agent active
again and ends its deprovisioning runs still going (``supersede_runs``); the sessions the disable ended stay
ended. Group changes reach live sessions at once (``SessionStore.update_agent_groups``), as SCIM's do. Each
change commits on its own; one that fails is logged and reported while the rest, the disables above all, are
still carried out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.writer import AuditLog
from gateway.deprovision.kill import SessionKiller
from gateway.directory.groups import DirectoryGroup
from gateway.directory.plan import Change, Plan
from gateway.directory.store import DirectoryStore
from gateway.errors import ChannelgateError, NotFound
from gateway.sessions.base import SessionStore
from gateway.storage._time import to_db
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import AgentRepository, user_name_key
from gateway.storage.database import write_transaction
from gateway.storage.groups import GroupRepository
from gateway.storage.limits import unstorable
from gateway.storage.pipeline import supersede_runs
from gateway.storage.schema import agents, group_members, groups

log = logging.getLogger("channelgate.ldap")


#: What one change's write may meet without the others being stopped: a row the database refuses (a constraint,
#: a value), the database or the session store failing for a moment, an agent deleted meanwhile.
_CONTAINED = (ChannelgateError, IntegrityError)


@dataclass(slots=True)
class Applied:
    counts: dict[str, int] = field(default_factory=dict)
    #: The changes whose writes failed (logged); the plan's other changes were carried out.
    failed: list[Change] = field(default_factory=list)

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


class PlanApplier:
    def __init__(
        self,
        store: DirectoryStore,
        agent_repository: AgentRepository,
        group_repository: GroupRepository,
        killer: SessionKiller,
        sessions: SessionStore,
        audit: AuditLog,
    ) -> None:
        self._store = store
        self._agents = agent_repository
        self._groups = group_repository
        self._killer = killer
        self._sessions = sessions
        self._audit = audit
        self.actor = f"ldap:{store.directory}"

    def record(self, change: str, now: datetime, **fields: Any) -> AccessRecord:
        detail = {"directory": self._store.directory, **fields.pop("detail", {})}
        return AccessRecord(time=now, kind="ldap", actor=self.actor, decision=change, detail=detail, **fields)

    async def sync_groups(self, found: Iterable[DirectoryGroup], now: datetime, *, complete: bool) -> set[str]:
        """Create and rename this directory's groups (and, from a complete list, delete the ones gone); returns
        the agent ids whose group names changed by a rename or deletion."""
        moment = to_db(now)
        affected: set[str] = set()
        async with write_transaction(self._store.engine) as conn:
            existing = await self._store.group_ids(conn)
            seen: set[str] = set()
            records = []
            for group in found:
                seen.add(group.entry_id)
                problem = unstorable(groups, {"display_name": "its name"}, {"display_name": group.name})
                if problem is not None:  # kept as it is (or not created): one group must not stop every sync
                    log.warning("directory %s: group %s left out: %s", self._store.directory, group.dn, problem)
                    continue
                group_id = existing.get(group.entry_id)
                if group_id is None:
                    group_id = str(uuid4())
                    await conn.execute(
                        insert(groups).values(
                            id=group_id, display_name=group.name, source="ldap", version=1, created_at=moment,
                            updated_at=moment,
                        )
                    )  # fmt: skip
                    await self._store.add_group(conn, group.entry_id, group_id, group.dn)
                    records.append(self.record("group_created", now, reason=group.name, detail={"dn": group.dn}))
                    continue
                renamed = await conn.execute(
                    update(groups)
                    .where(groups.c.id == group_id, groups.c.display_name != group.name)
                    .values(display_name=group.name, version=groups.c.version + 1, updated_at=moment)
                )
                await self._store.set_group_dn(conn, group.entry_id, group.dn)
                if renamed.rowcount:
                    affected |= await _members_of(conn, group_id)
                    records.append(self.record("group_renamed", now, reason=group.name, detail={"dn": group.dn}))
            if complete:
                gone = [entry_id for entry_id in existing if entry_id not in seen]
                for entry_id in gone:
                    group_id = existing[entry_id]
                    affected |= await _members_of(conn, group_id)
                    await conn.execute(delete(group_members).where(group_members.c.group_id == group_id))
                    await conn.execute(
                        update(groups)
                        .where(groups.c.id == group_id)
                        .values(deleted_at=moment, version=groups.c.version + 1, updated_at=moment)
                    )
                    records.append(self.record("group_deleted", now, detail={"group_id": group_id}))
                await self._store.remove_groups(conn, gone)
            if records:
                await self._audit.write(*records, conn=conn)
        return affected

    async def push_groups(self, agent_id: str) -> None:
        """The agent's group names to its live sessions, on every replica (ASVS 8.3.2)."""
        await self._sessions.update_agent_groups(agent_id, await self._groups.names_of(agent_id))

    async def apply(self, plan: Plan, now: datetime) -> Applied:
        """Carry out ``plan``, each change in its own transaction. A change that fails is logged and listed in
        ``failed`` and the others go on, above all the disables: one entry the database refuses must never keep
        a departed agent working. A full sync tries the failed ones again."""
        applied = Applied()
        creates = [c for c in plan.changes if c.kind == "create"]
        touched_groups: set[str] = set()
        if creates:
            await self._create_all(creates, now, applied)
        steps = {"update": self._update, "groups": self._set_groups, "reactivate": self._reactivate}
        for change in plan.changes:
            if change.kind == "conflict":
                log.warning("directory %s: %s", self._store.directory, change.describe())
                applied.add("conflict")
            elif change.kind in steps:
                try:
                    await steps[change.kind](change, now)
                except _CONTAINED as exc:
                    self._failed(change, exc, applied)
                    continue
                applied.add(change.kind)
                if change.kind == "groups" and change.agent_id is not None:
                    touched_groups.add(change.agent_id)
        # Group names first, so a session about to lose access loses it with the very next request.
        for agent_id in sorted(touched_groups):
            try:
                await self.push_groups(agent_id)
            except _CONTAINED as exc:
                log.error("directory %s: the new groups of agent %s reached no session: %s", self._store.directory,
                          agent_id, _reason(exc))  # fmt: skip
        for change in plan.disables:
            try:
                if await self._disable(change, now):
                    applied.add("disable")
            except _CONTAINED as exc:
                self._failed(change, exc, applied)
        return applied

    def _failed(self, change: Change, exc: Exception, applied: Applied) -> None:
        applied.failed.append(change)
        applied.add("failed")
        log.error("directory %s: %s failed (%s); the plan's other changes go on", self._store.directory,
                  change.describe(), _reason(exc))  # fmt: skip

    async def _create_all(self, creates: list[Change], now: datetime, applied: Applied) -> None:
        """The new agents in one transaction (thousands on a first sync); if it fails, one by one, so only the
        agents the database refuses are left out."""
        try:
            await self._create(creates, now)
        except _CONTAINED:
            for change in creates:
                try:
                    await self._create([change], now)
                except _CONTAINED as exc:
                    self._failed(change, exc, applied)
                else:
                    applied.add("create")
        else:
            applied.add("create", len(creates))

    async def _create(self, creates: list[Change], now: datetime) -> None:
        moment = to_db(now)
        rows, entries, records = [], [], []
        for change in creates:
            assert change.agent_id is not None and change.dn is not None
            active = bool(change.values.get("active"))
            rows.append(
                {
                    **{k: v for k, v in change.values.items() if k != "active"},
                    "id": change.agent_id,
                    "user_name_key": user_name_key(change.user_name),
                    "active": active,
                    "disabled_reason": None if active else change.reason,
                    "source": "ldap",
                    "attributes": {"ldap": {"directory": self._store.directory, "dn": change.dn}},
                    "version": 1,
                    "created_at": moment,
                    "updated_at": moment,
                }
            )
            entries.append((change.entry_id, change.agent_id, change.dn, not active))
            records.append(
                self.record(
                    "create", now, agent_id=change.agent_id, agent_name=change.user_name, reason=change.reason,
                    detail={"dn": change.dn, "active": active},
                )
            )  # fmt: skip
        async with write_transaction(self._store.engine) as conn:
            await conn.execute(insert(agents), rows)
            await self._store.add_entries(conn, entries)
            ids = await self._store.group_ids_by_name(conn)
            memberships = [
                {"group_id": ids[name], "agent_id": c.agent_id} for c in creates for name in c.groups if name in ids
            ]
            if memberships:
                await conn.execute(insert(group_members), memberships)
            await self._audit.write(*records, conn=conn)

    async def _update(self, change: Change, now: datetime) -> None:
        assert change.agent_id is not None
        values: dict[str, Any] = dict(change.values)
        if "user_name" in values:
            values["user_name_key"] = user_name_key(str(values["user_name"]))
        async with write_transaction(self._store.engine) as conn:
            if values:
                await conn.execute(
                    update(agents)
                    .where(agents.c.id == change.agent_id, agents.c.deleted_at.is_(None))
                    .values(**values, version=agents.c.version + 1, updated_at=to_db(now))
                )
            await self._store.set_entry(conn, change.entry_id, dn=change.dn)
            fields = sorted(change.values) + (["dn"] if change.dn else [])
            await self._audit.write(
                self.record(
                    "update", now, agent_id=change.agent_id, agent_name=change.user_name, detail={"fields": fields}
                ),
                conn=conn,
            )

    async def _set_groups(self, change: Change, now: datetime) -> None:
        assert change.agent_id is not None
        async with write_transaction(self._store.engine) as conn:
            ids = await self._store.group_ids_by_name(conn)
            mine = list((await self._store.group_ids(conn)).values())
            await conn.execute(
                delete(group_members).where(
                    group_members.c.agent_id == change.agent_id, group_members.c.group_id.in_(mine)
                )
            )
            rows = [{"group_id": ids[name], "agent_id": change.agent_id} for name in change.groups if name in ids]
            if rows:
                await conn.execute(insert(group_members), rows)
            await self._audit.write(
                self.record(
                    "groups", now, agent_id=change.agent_id, agent_name=change.user_name,
                    detail={"groups": sorted(change.groups)},
                ),
                conn=conn,
            )  # fmt: skip

    async def _reactivate(self, change: Change, now: datetime) -> None:
        assert change.agent_id is not None
        async with write_transaction(self._store.engine) as conn:
            await self._agents.set_active(change.agent_id, True, None, now, conn=conn)
            # The runs of the disable this ends must not go on acting on an active agent: they end here too.
            await supersede_runs(conn, change.agent_id, now, actor=self.actor, reason=change.reason or "reactivated")
            await self._store.set_entry(conn, change.entry_id, disabled_by_sync=False)
            await self._audit.write(
                self.record(
                    "reactivate", now, agent_id=change.agent_id, agent_name=change.user_name, reason=change.reason
                ),
                conn=conn,
            )

    async def _disable(self, change: Change, now: datetime) -> bool:
        """Deprovision through the pipeline; False when the agent is gone meanwhile."""
        assert change.agent_id is not None and change.reason is not None
        await self._audit.write(
            self.record("disable", now, agent_id=change.agent_id, agent_name=change.user_name, reason=change.reason)
        )
        try:
            await self._killer.deprovision(change.agent_id, reason=change.reason, actor=self.actor, source="ldap")
        except NotFound:
            return False
        async with write_transaction(self._store.engine) as conn:
            await self._store.set_entry(conn, change.entry_id, disabled_by_sync=True)
        return True


def _reason(exc: Exception) -> str:
    """What failed, without data: our errors' messages name no secret; a driver's may quote the row."""
    return exc.message if isinstance(exc, ChannelgateError) else type(exc).__name__


async def _members_of(conn: AsyncConnection, group_id: str) -> set[str]:

    query = select(group_members.c.agent_id).where(group_members.c.group_id == group_id)
    return set((await conn.execute(query)).scalars())
