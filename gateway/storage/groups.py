"""Groups and their members: provisioned by SCIM (issue 3), read by sessions as the agent's group names.

A member is a live agent; a deleted agent drops out of every group it was in (the rows stay until the group
changes, but no read returns them). Deleting a group is soft, like agents (RFC 7644 §3.6: later requests 404).
Every write bumps ``version``, the SCIM ETag (RFC 7644 §3.14).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import ChannelgateError, NotFound
from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.schema import agents, group_members, groups


class StaleVersion(ChannelgateError):
    """The stored resource changed since the version the client named (If-Match, RFC 7644 §3.14)."""

    status = 412
    code = "stale_version"


class UnknownMembers(ChannelgateError):
    """A group member names no live agent."""

    status = 400
    code = "unknown_members"

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(f"members must be provisioned users; no user has the id {', '.join(repr(m) for m in missing)}")
        self.missing = tuple(missing)


@dataclass(frozen=True, slots=True)
class Member:
    agent_id: str
    user_name: str


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    display_name: str
    external_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class GroupChange:
    """The stored group and the agents whose set of group names changed (their sessions must learn it)."""

    group: Group | None
    affected_agents: frozenset[str]


_LIVE = groups.c.deleted_at.is_(None)
_LIVE_AGENT = agents.c.deleted_at.is_(None)


class GroupRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _members(self, conn: AsyncConnection, group_ids: Sequence[str]) -> dict[str, list[Member]]:
        found: dict[str, list[Member]] = {group_id: [] for group_id in group_ids}
        if not group_ids:
            return found
        query = (
            select(group_members.c.group_id, agents.c.id, agents.c.user_name)
            .join(agents, agents.c.id == group_members.c.agent_id)
            .where(group_members.c.group_id.in_(group_ids), _LIVE_AGENT)
            .order_by(agents.c.user_name_key, agents.c.id)
        )
        for group_id, agent_id, user_name in (await conn.execute(query)).all():
            found[group_id].append(Member(agent_id, user_name))
        return found

    async def _groups(self, conn: AsyncConnection, rows: Sequence[Any]) -> list[Group]:
        members = await self._members(conn, [row["id"] for row in rows])
        return [
            Group(
                id=row["id"],
                display_name=row["display_name"],
                external_id=row["external_id"],
                version=row["version"],
                created_at=from_db(row["created_at"]),
                updated_at=from_db(row["updated_at"]),
                members=tuple(members[row["id"]]),
            )
            for row in rows
        ]

    async def get(self, group_id: str, *, conn: AsyncConnection | None = None) -> Group | None:
        async with read_transaction(self._engine, conn) as c:
            rows = (await c.execute(select(groups).where(groups.c.id == group_id, _LIVE))).mappings().all()
            found = await self._groups(c, rows)
        return found[0] if found else None

    async def search(
        self, condition: ColumnElement[bool] | None, offset: int, limit: int | None
    ) -> tuple[int, list[Group]]:
        """Live groups matching ``condition``, in creation order (stable for ``startIndex`` paging)."""
        where = [_LIVE] if condition is None else [_LIVE, condition]
        async with read_transaction(self._engine) as c:
            total = (await c.execute(select(func.count()).select_from(groups).where(*where))).scalar_one()
            query = select(groups).where(*where).order_by(groups.c.created_at, groups.c.id).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            rows = (await c.execute(query)).mappings().all()
            return total, await self._groups(c, rows)

    async def names_of(self, agent_id: str, *, conn: AsyncConnection | None = None) -> frozenset[str]:
        """The displayNames of the live groups a live agent belongs to (what its sessions carry)."""
        query = (
            select(groups.c.display_name)
            .join(group_members, group_members.c.group_id == groups.c.id)
            .where(group_members.c.agent_id == agent_id, _LIVE)
        )
        async with read_transaction(self._engine, conn) as c:
            return frozenset((await c.execute(query)).scalars())

    async def create(
        self, display_name: str, external_id: str | None, member_ids: Iterable[str], now: datetime
    ) -> GroupChange:
        group_id = str(uuid4())
        members = frozenset(member_ids)
        moment = to_db(now)
        async with write_transaction(self._engine) as c:
            await _check_members(c, members)
            await c.execute(
                insert(groups).values(
                    id=group_id,
                    display_name=display_name,
                    external_id=external_id,
                    source="scim",
                    version=1,
                    created_at=moment,
                    updated_at=moment,
                )
            )
            if members:
                await c.execute(insert(group_members), [{"group_id": group_id, "agent_id": m} for m in members])
            group = await self.get(group_id, conn=c)
        return GroupChange(group, members)

    async def replace(
        self,
        group_id: str,
        display_name: str,
        external_id: str | None,
        member_ids: Iterable[str],
        expected_version: int | None,
        now: datetime,
    ) -> GroupChange:
        """Replace the group's attributes and its whole member list in one transaction."""
        members = frozenset(member_ids)
        async with write_transaction(self._engine) as c:
            before = await self.get(group_id, conn=c)
            if before is None:
                raise NotFound(f"no group with id {group_id!r}")
            if expected_version is not None and before.version != expected_version:
                raise StaleVersion(f"the group changed since version {expected_version}")
            current = {m.agent_id for m in before.members}
            await _check_members(c, members - current)
            await c.execute(
                update(groups)
                .where(groups.c.id == group_id, _LIVE)
                .values(
                    display_name=display_name,
                    external_id=external_id,
                    version=groups.c.version + 1,
                    updated_at=to_db(now),
                )
            )
            await c.execute(delete(group_members).where(group_members.c.group_id == group_id))
            if members:
                await c.execute(insert(group_members), [{"group_id": group_id, "agent_id": m} for m in members])
            group = await self.get(group_id, conn=c)
        renamed = before.display_name != display_name
        affected = (current | members) if renamed else (current ^ members)
        return GroupChange(group, frozenset(affected))

    async def delete(self, group_id: str, expected_version: int | None, now: datetime) -> GroupChange:
        async with write_transaction(self._engine) as c:
            before = await self.get(group_id, conn=c)
            if before is None:
                raise NotFound(f"no group with id {group_id!r}")
            if expected_version is not None and before.version != expected_version:
                raise StaleVersion(f"the group changed since version {expected_version}")
            await c.execute(delete(group_members).where(group_members.c.group_id == group_id))
            await c.execute(
                update(groups)
                .where(groups.c.id == group_id)
                .values(deleted_at=to_db(now), version=groups.c.version + 1, updated_at=to_db(now))
            )
        return GroupChange(None, frozenset(m.agent_id for m in before.members))


async def _check_members(conn: AsyncConnection, member_ids: frozenset[str]) -> None:
    if not member_ids:
        return
    query = select(agents.c.id).where(agents.c.id.in_(member_ids), _LIVE_AGENT)
    found = set((await conn.execute(query)).scalars())
    missing = sorted(member_ids - found)
    if missing:
        raise UnknownMembers(missing)
