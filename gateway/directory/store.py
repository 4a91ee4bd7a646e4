"""The directory sync's rows: which entries stand behind which agents and groups, the sync state, quarantines."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.directory.entries import normalize_dn
from gateway.directory.plan import Holder, KnownAgent
from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.schema import (
    agents,
    deprovision_runs,
    group_members,
    groups,
    ldap_entries,
    ldap_groups,
    ldap_quarantines,
    ldap_sync_state,
)


@dataclass(frozen=True, slots=True)
class SyncState:
    directory: str
    high_water: str | None
    last_full_at: datetime | None
    last_incremental_at: datetime | None
    last_result: Mapping[str, Any] | None
    last_error: str | None
    feed_state: str | None
    feed_event_at: datetime | None


@dataclass(frozen=True, slots=True)
class Quarantine:
    id: str
    directory: str
    state: str
    disabling: int
    active_agents: int
    agents: list[dict[str, str]]
    created_at: datetime
    approved_by: str | None
    approved_at: datetime | None


#: The agent columns a plan compares (not ``attributes``: its JSON is not needed and costs a parse per row).
_KNOWN_COLUMNS = ("id", "user_name", "email", "display_name", "employee_number", "manager_id", "active")


def _time(value: Any) -> datetime | None:
    return None if value is None else from_db(value)


class DirectoryStore:
    def __init__(self, engine: AsyncEngine, directory: str) -> None:
        self.engine = engine
        self.directory = directory

    async def known(self, entry_ids: Collection[str] | None = None) -> dict[str, KnownAgent]:
        """The agents this directory manages (deleted ones aside), all or those of ``entry_ids``, with their
        names of this directory's groups."""
        mine = ldap_entries.c.directory == self.directory
        if entry_ids is not None:
            mine = and_(mine, ldap_entries.c.entry_id.in_(list(entry_ids)))
        query = (
            select(
                ldap_entries.c.entry_id,
                ldap_entries.c.dn,
                ldap_entries.c.disabled_by_sync,
                *(agents.c[name] for name in _KNOWN_COLUMNS),
            )
            .join(agents, agents.c.id == ldap_entries.c.agent_id)
            .where(mine, agents.c.deleted_at.is_(None))
        )
        scope = select(ldap_entries.c.agent_id).where(mine)
        memberships = (
            select(group_members.c.agent_id, groups.c.display_name)
            .join(groups, groups.c.id == group_members.c.group_id)
            .join(ldap_groups, and_(ldap_groups.c.group_id == groups.c.id, ldap_groups.c.directory == self.directory))
            .where(groups.c.deleted_at.is_(None), group_members.c.agent_id.in_(scope))
        )
        async with read_transaction(self.engine) as conn:
            rows = (await conn.execute(query)).mappings().all()
            names: dict[str, set[str]] = {}
            for agent_id, name in (await conn.execute(memberships)).all():
                names.setdefault(agent_id, set()).add(name)
        return {
            row["entry_id"]: KnownAgent(
                agent_id=row["id"],
                entry_id=row["entry_id"],
                dn=row["dn"],
                user_name=row["user_name"],
                email=row["email"],
                display_name=row["display_name"],
                employee_number=row["employee_number"],
                manager_id=row["manager_id"],
                active=bool(row["active"]),
                disabled_by_sync=bool(row["disabled_by_sync"]),
                groups=frozenset(names.get(row["id"], ())),
            )
            for row in rows
        }

    async def deleted(self, entry_ids: Collection[str] | None = None) -> dict[str, str]:
        """Entry id → agent id of this directory's entries (all, or those of ``entry_ids``) whose agent was
        deleted, over SCIM or by an admin: :meth:`known` leaves them out, and the entry keeps its row."""
        mine = ldap_entries.c.directory == self.directory
        if entry_ids is not None:
            mine = and_(mine, ldap_entries.c.entry_id.in_(list(entry_ids)))
        query = (
            select(ldap_entries.c.entry_id, ldap_entries.c.agent_id)
            .join(agents, agents.c.id == ldap_entries.c.agent_id)
            .where(mine, agents.c.deleted_at.is_not(None))
        )
        async with read_transaction(self.engine) as conn:
            return {entry_id: agent_id for entry_id, agent_id in (await conn.execute(query)).all()}

    async def holders(self, keys: Collection[str] | None = None) -> dict[str, Holder]:
        """userName key → (agent id, source) of every live agent, or of those holding ``keys``."""
        query = select(agents.c.user_name_key, agents.c.id, agents.c.source).where(agents.c.deleted_at.is_(None))
        if keys is not None:
            query = query.where(agents.c.user_name_key.in_(list(keys)))
        async with read_transaction(self.engine) as conn:
            return {key: (agent_id, source) for key, agent_id, source in (await conn.execute(query)).all()}

    async def managers(self) -> dict[str, str]:
        """Normalised DN → agent id of every agent this directory manages (manager DNs resolve through it)."""
        query = select(ldap_entries.c.dn, ldap_entries.c.agent_id).where(ldap_entries.c.directory == self.directory)
        async with read_transaction(self.engine) as conn:
            return {normalize_dn(dn): agent_id for dn, agent_id in (await conn.execute(query)).all()}

    async def active_agents(self) -> int:
        """How many live agents this directory manages are active."""
        query = (
            select(func.count())
            .select_from(ldap_entries)
            .join(agents, agents.c.id == ldap_entries.c.agent_id)
            .where(ldap_entries.c.directory == self.directory, agents.c.deleted_at.is_(None), agents.c.active)
        )
        async with read_transaction(self.engine) as conn:
            return int((await conn.execute(query)).scalar_one())

    async def group_ids(self, conn: AsyncConnection) -> dict[str, str]:
        """Entry id → group id of this directory's live groups."""
        query = (
            select(ldap_groups.c.entry_id, ldap_groups.c.group_id)
            .join(groups, groups.c.id == ldap_groups.c.group_id)
            .where(ldap_groups.c.directory == self.directory, groups.c.deleted_at.is_(None))
        )
        return {entry_id: group_id for entry_id, group_id in (await conn.execute(query)).all()}

    async def group_ids_by_name(self, conn: AsyncConnection) -> dict[str, str]:
        """displayName → group id of this directory's live groups."""
        query = (
            select(groups.c.display_name, groups.c.id)
            .join(ldap_groups, ldap_groups.c.group_id == groups.c.id)
            .where(ldap_groups.c.directory == self.directory, groups.c.deleted_at.is_(None))
        )
        return {name: group_id for name, group_id in (await conn.execute(query)).all()}

    async def add_entries(self, conn: AsyncConnection, rows: Iterable[tuple[str, str, str, bool]]) -> None:
        """(entry id, agent id, DN, disabled_by_sync) of agents just created."""
        values = [
            {"directory": self.directory, "entry_id": e, "agent_id": a, "dn": dn, "disabled_by_sync": d}
            for e, a, dn, d in rows
        ]
        if values:
            await conn.execute(insert(ldap_entries), values)

    async def set_entry(self, conn: AsyncConnection, entry_id: str, **values: Any) -> None:
        await conn.execute(
            update(ldap_entries)
            .where(ldap_entries.c.directory == self.directory, ldap_entries.c.entry_id == entry_id)
            .values(**values)
        )

    async def add_group(self, conn: AsyncConnection, entry_id: str, group_id: str, dn: str) -> None:
        await conn.execute(
            insert(ldap_groups).values(directory=self.directory, entry_id=entry_id, group_id=group_id, dn=dn)
        )

    async def set_group_dn(self, conn: AsyncConnection, entry_id: str, dn: str) -> None:
        await conn.execute(
            update(ldap_groups)
            .where(ldap_groups.c.directory == self.directory, ldap_groups.c.entry_id == entry_id)
            .values(dn=dn)
        )

    async def remove_groups(self, conn: AsyncConnection, entry_ids: Iterable[str]) -> None:
        ids = list(entry_ids)
        if ids:
            await conn.execute(
                delete(ldap_groups).where(ldap_groups.c.directory == self.directory, ldap_groups.c.entry_id.in_(ids))
            )

    # ------------------------------------------------------------------------------------------ state

    async def state(self) -> SyncState:
        query = select(ldap_sync_state).where(ldap_sync_state.c.directory == self.directory)
        async with read_transaction(self.engine) as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return SyncState(self.directory, None, None, None, None, None, None, None)
        return SyncState(
            self.directory,
            row["high_water"],
            _time(row["last_full_at"]),
            _time(row["last_incremental_at"]),
            row["last_result"],
            row["last_error"],
            row["feed_state"],
            _time(row["feed_event_at"]),
        )

    async def save_state(self, now: datetime, **values: Any) -> None:
        """Update the given columns of this directory's state row (created on first use)."""
        values = {k: (to_db(v) if isinstance(v, datetime) else v) for k, v in values.items()}
        async with write_transaction(self.engine) as conn:
            changed = await conn.execute(
                update(ldap_sync_state)
                .where(ldap_sync_state.c.directory == self.directory)
                .values(**values, updated_at=to_db(now))
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(ldap_sync_state).values(directory=self.directory, updated_at=to_db(now), **values)
                )

    # ------------------------------------------------------------------------------------------ quarantine

    async def quarantines(self, *, states: tuple[str, ...] = ("held", "approved")) -> list[Quarantine]:
        query = (
            select(ldap_quarantines)
            .where(ldap_quarantines.c.directory == self.directory, ldap_quarantines.c.state.in_(states))
            .order_by(ldap_quarantines.c.created_at)
        )
        async with read_transaction(self.engine) as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            Quarantine(
                r["id"],
                r["directory"],
                r["state"],
                r["disabling"],
                r["active_agents"],
                list(r["agents"]),
                from_db(r["created_at"]),
                r["approved_by"],
                _time(r["approved_at"]),
            )
            for r in rows
        ]

    async def hold(self, disabling: int, active: int, held: list[dict[str, str]], now: datetime) -> tuple[str, bool]:
        """Record a held sync and return (its id, whether it is new). A sync holding the same agents as the one
        already held keeps that quarantine (its id stays valid for ``approve``); a different one replaces it
        (the newest plan is the one to approve)."""
        wanted = sorted(entry["agent_id"] for entry in held)
        for current in await self.quarantines(states=("held",)):
            if sorted(entry["agent_id"] for entry in current.agents) == wanted:
                return current.id, False
        quarantine_id = str(uuid4())
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                delete(ldap_quarantines).where(
                    ldap_quarantines.c.directory == self.directory, ldap_quarantines.c.state == "held"
                )
            )
            await conn.execute(
                insert(ldap_quarantines).values(
                    id=quarantine_id,
                    directory=self.directory,
                    state="held",
                    disabling=disabling,
                    active_agents=active,
                    agents=held,
                    created_at=to_db(now),
                )
            )
        return quarantine_id, True

    async def approve(self, quarantine_id: str, actor: str, now: datetime) -> bool:
        async with write_transaction(self.engine) as conn:
            changed = await conn.execute(
                update(ldap_quarantines)
                .where(
                    ldap_quarantines.c.id == quarantine_id,
                    ldap_quarantines.c.directory == self.directory,
                    ldap_quarantines.c.state == "held",
                )
                .values(state="approved", approved_by=actor, approved_at=to_db(now))
            )
        return bool(changed.rowcount)

    async def recent_disables(self, since: datetime) -> int:
        """Agents this directory deprovisioned since ``since`` (their pipeline runs, so the count survives
        restarts and covers every replica), except those an admin released from a quarantine."""
        runs = select(deprovision_runs.c.agent_id).where(
            deprovision_runs.c.actor == f"ldap:{self.directory}", deprovision_runs.c.created_at >= to_db(since)
        )
        released = select(ldap_quarantines.c.agents).where(
            ldap_quarantines.c.directory == self.directory,
            ldap_quarantines.c.state.in_(("approved", "released")),
            ldap_quarantines.c.created_at >= to_db(since),
        )
        async with read_transaction(self.engine) as conn:
            disabled = set((await conn.execute(runs)).scalars())
            for held in (await conn.execute(released)).scalars():
                disabled -= {entry["agent_id"] for entry in held}
        return len(disabled)

    async def close_approved(self) -> None:
        """The approved disables were carried out: the quarantine is over."""
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                update(ldap_quarantines)
                .where(ldap_quarantines.c.directory == self.directory, ldap_quarantines.c.state == "approved")
                .values(state="released")
            )
