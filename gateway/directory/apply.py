"""Carrying out a plan: agents and groups written, disables through the deprovisioning pipeline, every change
in the access log (kind ``ldap``).

A disable is ``SessionKiller.deprovision`` with source ``ldap``: the agent is disabled, its pipeline run queued
and every session on every replica ended before the call returns. A reactivation only sets the agent active
again; the sessions the disable ended stay ended. Group changes reach live sessions at once
(``SessionStore.update_agent_groups``), as SCIM's do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.writer import AuditLog
from gateway.deprovision.kill import SessionKiller
from gateway.directory.groups import DirectoryGroup
from gateway.directory.plan import Change, Plan
from gateway.directory.store import DirectoryStore
from gateway.errors import NotFound
from gateway.sessions.base import SessionStore
from gateway.storage._time import to_db
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import AgentRepository, user_name_key
from gateway.storage.database import write_transaction
from gateway.storage.groups import GroupRepository
from gateway.storage.schema import agents, group_members, groups

log = logging.getLogger("channelgate.ldap")


@dataclass(slots=True)
class Applied:
    counts: dict[str, int] = field(default_factory=dict)

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
        applied = Applied()
        creates = [c for c in plan.changes if c.kind == "create"]
        touched_groups: set[str] = set()
        if creates:
            await self._create(creates, now)
            applied.add("create", len(creates))
        for change in plan.changes:
            if change.kind == "update":
                await self._update(change, now)
            elif change.kind == "groups":
                await self._set_groups(change, now)
                assert change.agent_id is not None
                touched_groups.add(change.agent_id)
            elif change.kind == "reactivate":
                await self._reactivate(change, now)
            elif change.kind == "conflict":
                log.warning("directory %s: %s", self._store.directory, change.describe())
            if change.kind not in {"create", "disable"}:
                applied.add(change.kind)
        # Group names first, so a session about to lose access loses it with the very next request.
        for agent_id in sorted(touched_groups):
            await self.push_groups(agent_id)
        for change in plan.disables:
            if await self._disable(change, now):
                applied.add("disable")
        return applied

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


async def _members_of(conn: AsyncConnection, group_id: str) -> set[str]:

    query = select(group_members.c.agent_id).where(group_members.c.group_id == group_id)
    return set((await conn.execute(query)).scalars())
