"""SCIM resources on our database: Users are rows of ``agents``, Groups of ``groups`` (scim2-server storage ABC).

scim2-server applies PUT and PATCH to the stored resource and hands ``update`` the whole new state, so the
lifecycle is read here by comparing ``active`` before and after: true → false deprovisions (after the row
committed, before ``update`` returns, hence before the response); false → true re-enables the agent, whose old
sessions stay dead, and ends its deprovisioning runs still going in the same transaction. DELETE deprovisions
and then soft-deletes (RFC 7644 §3.6): the id answers 404 from then on
and the userName is free for a rehire. Searches page by a fixed order (created, id), stable across pages as
Okta requires; filters go through ``scim.filters``' allow-list and never widen. ``expected_version`` is the
version the engine read, never the client's If-Match: a write is a compare-and-swap, which ``scim.handler`` tries
again on a fresh read when it loses.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final
from uuid import uuid4

from scim2_models import (
    Group,
    InvalidFilterException,
    InvalidValueException,
    NotFoundException,
    NotImplementedException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    SearchRequest,
    UniquenessException,
    User,
)
from scim2_server.storage import AsyncScimStorage, SearchPage
from sqlalchemy import ColumnElement, Select, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import NotFound
from gateway.storage._time import to_db
from gateway.storage.agents import AgentRepository
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.groups import GroupRepository, StaleVersion, UnknownMembers
from gateway.storage.pipeline import supersede_runs
from gateway.storage.quick_reads import QuickReads
from gateway.storage.schema import agents, group_members, groups
from gateway.timeutil import utcnow
from scim.errors import InvalidFilter
from scim.filters import group_filter, user_filter
from scim.lifecycle import Lifecycle, actor
from scim.mapping import (
    group_resource,
    member_ids,
    unstorable_group,
    unstorable_user,
    user_columns,
    user_document,
    user_resource,
    version_of,
)
from scim.provider import MAX_RESULTS

_LIVE = agents.c.deleted_at.is_(None)
#: Largest OFFSET both databases bind (a signed 64-bit integer); a larger startIndex is past every row anyway.
_MAX_OFFSET: Final = 2**63 - 1


def _expected(expected_version: str | None) -> int | None:
    if expected_version is None:
        return None
    version = version_of(expected_version)
    if version is None:
        raise PreconditionFailedException(detail=f"If-Match {expected_version} is not a version of this resource")
    return version


def _stale(found: int, expected: int | None) -> None:
    if expected is not None and found != expected:
        raise PreconditionFailedException(
            detail=f'the resource changed (now version W/"{found}"); GET it again and resend with its ETag'
        )


def _not_found(kind: str, resource_id: str) -> NotFoundException:
    return NotFoundException(detail=f"no {kind} has the id {resource_id!r}")


#: The live groups of a list of agents (an expanding IN), in a stable order.
_MEMBERSHIPS: Final = (
    select(group_members.c.agent_id, groups.c.id, groups.c.display_name)
    .join(groups, groups.c.id == group_members.c.group_id)
    .where(group_members.c.agent_id.in_(bindparam("ids", expanding=True)), groups.c.deleted_at.is_(None))
    .order_by(groups.c.display_name, groups.c.id)
)
#: Live users in the paging order (created, id): stable across pages, as Okta requires.
_USER_PAGE: Final = select(agents).where(_LIVE).order_by(agents.c.created_at, agents.c.id)


@functools.cache
def _lookup_statement(column: str) -> Select[Any]:
    """A page of live users with ``column`` = :value, outer-joined to their live groups, in the paging order."""
    page = (
        _USER_PAGE.where(agents.c[column] == bindparam("value"))
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
        .subquery()
    )
    live_groups = group_members.join(groups, (groups.c.id == group_members.c.group_id) & groups.c.deleted_at.is_(None))
    return (
        select(page, groups.c.id.label("group_id"), groups.c.display_name.label("group_name"))
        .select_from(page.outerjoin(live_groups, group_members.c.agent_id == page.c.id))
        .order_by(page.c.created_at, page.c.id, groups.c.display_name, groups.c.id)
    )


@functools.cache
def _lookup_count(column: str) -> Select[int]:
    return select(func.count()).select_from(agents).where(_LIVE, agents.c[column] == bindparam("value"))


def _memberships_by_agent(agent_ids: list[str], rows: Iterable[Any]) -> dict[str, list[tuple[str, str]]]:
    """(group id, displayName) of every live group of each agent, from the rows of ``_memberships_query``."""
    found: dict[str, list[tuple[str, str]]] = {agent_id: [] for agent_id in agent_ids}
    for agent_id, group_id, name in rows:
        found[agent_id].append((group_id, name))
    return found


class DatabaseStorage(AsyncScimStorage):
    def __init__(
        self,
        engine: AsyncEngine,
        agent_repository: AgentRepository,
        group_repository: GroupRepository,
        lifecycle: Lifecycle,
        clock: Callable[[], datetime] = utcnow,
        reads: QuickReads | None = None,
    ) -> None:
        self._engine = engine
        self._reads = reads or QuickReads(engine)
        self._agents = agent_repository
        self._groups = group_repository
        self._lifecycle = lifecycle
        self._clock = clock
        #: One lock per User being deleted in this process (dropped with its last holder).
        self._deleting: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # ------------------------------------------------------------------------------------------ reads

    async def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        if "\x00" in resource_id:  # no id holds U+0000, which PostgreSQL cannot even compare
            raise _not_found(str(resource_type.name).lower(), resource_id)
        if resource_type.name == "User":
            async with read_transaction(self._engine) as conn:
                row = (await conn.execute(select(agents).where(agents.c.id == resource_id, _LIVE))).mappings().first()
                if row is None:
                    raise _not_found("user", resource_id)
                return user_resource(row, (await self._memberships(conn, [resource_id]))[resource_id])
        group = await self._groups.get(resource_id)
        if group is None:
            raise _not_found("group", resource_id)
        return group_resource(group)

    async def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        if len(resource_types) != 1:
            raise NotImplementedException(detail="search /Users or /Groups; a search at the root is not supported")
        text = None if search_request.filter is None else str(search_request.filter)
        is_user = resource_types[0].name == "User"
        try:
            condition = None if text is None else (user_filter(text) if is_user else group_filter(text))
        except InvalidFilter as exc:
            raise InvalidFilterException(detail=exc.message) from None
        # A startIndex past the last result is an empty page, never an error (RFC 7644 §3.4.2.4).
        offset = min(search_request.start_index_0 or 0, _MAX_OFFSET)
        limit = MAX_RESULTS if search_request.count is None else search_request.count
        if not is_user:
            total, found = await self._groups.search(condition, offset, limit)
            return SearchPage(total, [group_resource(group) for group in found])
        return await self._search_users(condition, offset, limit)

    async def _search_users(self, condition: ColumnElement[bool] | None, offset: int, limit: int) -> SearchPage:
        where = [_LIVE] if condition is None else [_LIVE, condition]
        query = (_USER_PAGE if condition is None else _USER_PAGE.where(condition)).offset(offset).limit(limit)
        async with read_transaction(self._engine) as conn:
            total = (await conn.execute(select(func.count()).select_from(agents).where(*where))).scalar_one()
            rows = (await conn.execute(query)).mappings().all()
            memberships = await self._memberships(conn, [row["id"] for row in rows])
        return SearchPage(total, [user_resource(row, memberships[row["id"]]) for row in rows])

    async def lookup_users(self, column: str, value: str, offset: int, limit: int) -> tuple[int, list[Any]]:
        """Users whose ``column`` equals ``value`` (``scim.filters.user_equality``): total and one page, as
        stored documents (``user_document``), for ``scim.lookups``.

        One prebuilt statement reads the page and its live groups, so PostgreSQL answers in one round trip and
        SQLAlchemy builds nothing per request. The read may run inline on the event loop
        (``gateway.storage.quick_reads``): the column is indexed. A page shorter than asked for, from the
        start, is the whole result and needs no count.
        """
        query, parameters = _lookup_statement(column), {"value": value, "offset": offset, "limit": limit}

        def read(conn: Connection) -> tuple[int, list[Any]]:
            rows: dict[str, Any] = {}
            memberships: dict[str, list[tuple[str, str]]] = {}
            for row in conn.execute(query, parameters).mappings():
                rows.setdefault(row["id"], row)
                found = memberships.setdefault(row["id"], [])
                if row["group_id"] is not None:
                    found.append((row["group_id"], row["group_name"]))
            if offset == 0 and len(rows) < limit:
                total = len(rows)
            else:
                total = conn.execute(_lookup_count(column), parameters).scalar_one()
            return total, [user_document(row, memberships[agent_id]) for agent_id, row in rows.items()]

        return await self._reads.run(read)

    async def _memberships(self, conn: AsyncConnection, agent_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
        rows = (await conn.execute(_MEMBERSHIPS, {"ids": agent_ids})).all() if agent_ids else []
        return _memberships_by_agent(agent_ids, rows)

    # ------------------------------------------------------------------------------------------ writes

    async def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        if isinstance(resource, Group):
            return await self._group_write(resource, None, None)
        assert isinstance(resource, User)
        agent_id, now = str(uuid4()), to_db(self._clock())
        values = {
            **_storable(user_columns(resource)),
            "id": agent_id,
            "active": resource.active is not False,
            "source": "scim",
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with write_transaction(self._engine) as conn:
                await conn.execute(insert(agents).values(values))
        except IntegrityError:
            raise _taken(values["user_name"]) from None
        return await self.get(resource_type, agent_id)

    async def update(
        self, resource_type: ResourceType, resource: Resource[Any], *, expected_version: str | None = None
    ) -> Resource[Any]:
        expected = _expected(expected_version)
        assert resource.id is not None
        if isinstance(resource, Group):
            return await self._group_write(resource, resource.id, expected)
        assert isinstance(resource, User)
        values = _storable(user_columns(resource))
        try:
            async with write_transaction(self._engine) as conn:
                row = (await conn.execute(select(agents).where(agents.c.id == resource.id, _LIVE))).mappings().first()
                if row is None:
                    raise _not_found("user", resource.id)
                _stale(row["version"], expected)
                was_active = bool(row["active"])
                # An absent ``active`` keeps the current state: a PUT that omits it never re-enables anyone.
                active = was_active if resource.active is None else resource.active
                if active != was_active:
                    values |= {"active": active, "disabled_reason": None if active else "deactivated by SCIM"}
                    if active:  # made active again: a Shared Signals disable issued before this is stale
                        values["enabled_at"] = to_db(self._clock())
                await conn.execute(
                    update(agents)
                    .where(agents.c.id == resource.id)
                    .values(**values, version=agents.c.version + 1, updated_at=to_db(self._clock()))
                )
                if was_active and not active:
                    await self._lifecycle.deactivating(resource.id, conn=conn)
                elif active and not was_active:
                    # Made active again: the runs of the disable it ends must not go on revoking, handing over and
                    # deleting (they end in this transaction; the agent's ended sessions stay ended).
                    await supersede_runs(conn, resource.id, self._clock(), actor=actor(), reason="enabled by SCIM")
        except IntegrityError:
            raise _taken(values["user_name"]) from None
        if not active:
            await self._lifecycle.deactivated(resource.id, was_active=was_active)
        return await self.get(resource_type, resource.id)

    async def delete(
        self, resource_type: ResourceType, resource_id: str, *, expected_version: str | None = None
    ) -> None:
        expected = _expected(expected_version)
        if resource_type.name != "User":
            await self._group_delete(resource_id, expected)
            return
        # A DELETE repeated while the first still deprovisions (an IdP retrying after its timeout) waits for it and
        # then finds the user gone (404), instead of disabling the agent a second time in the access log.
        lock = self._deleting.get(resource_id)
        if lock is None:
            lock = self._deleting[resource_id] = asyncio.Lock()
        async with lock:
            agent = await self._agents.get(resource_id)
            if agent is None:
                raise _not_found("user", resource_id)
            _stale(agent.version, expected)
            await self._lifecycle.deleting(resource_id)
            try:
                await self._agents.mark_deleted(resource_id, "deleted by SCIM", self._clock())
            except NotFound:
                raise _not_found("user", resource_id) from None

    async def _group_write(self, group: Group, group_id: str | None, expected: int | None) -> Resource[Any]:
        assert group.display_name is not None  # required in every request context, checked by the engine
        problem = unstorable_group(group.display_name, group.external_id)
        if problem is not None:
            raise InvalidValueException(detail=problem)
        members = member_ids(group)
        try:
            if impossible := [member for member in members if "\x00" in member]:
                raise UnknownMembers(impossible)  # no id holds U+0000, which PostgreSQL cannot even compare
            if group_id is None:
                change = await self._groups.create(group.display_name, group.external_id, members, self._clock())
            else:
                change = await self._groups.replace(
                    group_id, group.display_name, group.external_id, members, expected, self._clock()
                )
        except UnknownMembers as exc:
            raise InvalidValueException(detail=exc.message) from None
        except StaleVersion:
            raise _group_stale() from None
        except NotFound:
            raise _not_found("group", group_id or "") from None
        await self._lifecycle.groups_changed(change.affected_agents)
        assert change.group is not None
        return group_resource(change.group)

    async def _group_delete(self, group_id: str, expected: int | None) -> None:
        try:
            change = await self._groups.delete(group_id, expected, self._clock())
        except StaleVersion:
            raise _group_stale() from None
        except NotFound:
            raise _not_found("group", group_id) from None
        await self._lifecycle.groups_changed(change.affected_agents)


def _storable(columns: dict[str, Any]) -> dict[str, Any]:
    problem = unstorable_user(columns)
    if problem is not None:
        raise InvalidValueException(detail=problem)
    return columns


def _taken(user_name: str) -> UniquenessException:
    return UniquenessException(
        detail=f"the userName {user_name!r} is already taken by another user (userName is compared "
        "case-insensitively); look the user up with a filter and update it instead"
    )


def _group_stale() -> PreconditionFailedException:
    return PreconditionFailedException(detail="the group changed; GET it again and resend with its ETag")
