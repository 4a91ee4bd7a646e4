"""Agents: the people behind the consoles, linked to their IdP account by (issuer, subject).

A login is first looked up by (iss, sub), the only stable identifier (OIDC Core §5.7). An agent the directory
provisioned (SCIM or LDAP) and that no login has claimed yet is linked once, by the configured ``LinkRule``: the
directory and the IdP are the same authority, so its record names the account. Any other name match is refused:
``preferred_username`` may be reassigned or chosen by the user, so linking an agent created by an earlier login
(``source = "oidc"``) or already linked by name would let whoever controls a colliding userName take it over.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import ColumnElement, RowMapping, case, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import AccessDenied, NotFound
from gateway.settings import LinkRule
from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.limits import NUL
from gateway.storage.quick_reads import QuickReads
from gateway.storage.schema import agents

#: Sources whose agents the directory manages: linkable once by the link rule, groups taken from the directory.
DIRECTORY_SOURCES = frozenset({"scim", "ldap"})


class UserNameConflict(AccessDenied):
    """A first login's userName belongs to another live agent; an administrator must link the accounts."""

    code = "user_name_conflict"


class AmbiguousLink(AccessDenied):
    """The link rule matches several unlinked directory agents; guessing could hand one person another's agent."""

    code = "ambiguous_link"


def user_name_key(user_name: str) -> str:
    """The uniqueness key of a userName: SCIM compares userName case-insensitively (RFC 7643 §4.1.1)."""
    return user_name.lower()


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    user_name: str
    external_id: str | None
    display_name: str | None
    email: str | None
    active: bool
    #: Soft-deleted (RFC 7644 §3.6): kept for the audit trail and (iss, sub) lookups, gone everywhere else.
    deleted: bool
    disabled_reason: str | None
    oidc_issuer: str | None
    oidc_subject: str | None
    source: str
    manager_id: str | None
    employee_number: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    #: When it was last made active again (None: active since it was created, or never re-enabled).
    enabled_at: datetime | None = None

    @property
    def active_since(self) -> datetime:
        """When the agent last became active: its last re-enable, else its creation."""
        return self.enabled_at or self.created_at

    @property
    def may_sign_in(self) -> bool:
        return self.active and not self.deleted


def _agent(row: RowMapping) -> Agent:
    return Agent(
        id=row["id"],
        user_name=row["user_name"],
        external_id=row["external_id"],
        display_name=row["display_name"],
        email=row["email"],
        active=bool(row["active"]),
        deleted=row["deleted_at"] is not None,
        disabled_reason=row["disabled_reason"],
        oidc_issuer=row["oidc_issuer"],
        oidc_subject=row["oidc_subject"],
        source=row["source"],
        manager_id=row["manager_id"],
        employee_number=row["employee_number"],
        version=row["version"],
        created_at=from_db(row["created_at"]),
        updated_at=from_db(row["updated_at"]),
        enabled_at=from_db(enabled) if (enabled := row["enabled_at"]) is not None else None,
    )


_LIVE = agents.c.deleted_at.is_(None)


class AgentRepository:
    def __init__(self, engine: AsyncEngine, reads: QuickReads | None = None) -> None:
        self._engine = engine
        #: The hot-path reader (``gateway.storage.quick_reads``) for :meth:`find` outside a transaction.
        self._reads = reads

    async def _one(self, conn: AsyncConnection, *where: Any) -> Agent | None:
        row = (await conn.execute(select(agents).where(*where))).mappings().first()
        return None if row is None else _agent(row)

    async def get(self, agent_id: str, *, conn: AsyncConnection | None = None) -> Agent | None:
        """The live agent with this id; a deleted agent is not found."""
        if NUL in agent_id:  # no stored value holds one (PostgreSQL would refuse the query, not find nothing)
            return None
        async with read_transaction(self._engine, conn) as c:
            return await self._one(c, agents.c.id == agent_id, _LIVE)

    async def get_any(self, agent_id: str, *, conn: AsyncConnection | None = None) -> Agent | None:
        """The agent with this id, deleted or not (the deprovisioning pipeline acts for deleted agents too)."""
        if NUL in agent_id:
            return None
        async with read_transaction(self._engine, conn) as c:
            return await self._one(c, agents.c.id == agent_id)

    async def find_by_user_name(self, user_name: str, *, conn: AsyncConnection | None = None) -> Agent | None:
        """The live agent with this userName, compared case-insensitively."""
        if NUL in user_name:
            return None
        async with read_transaction(self._engine, conn) as c:
            return await self._one(c, agents.c.user_name_key == user_name_key(user_name), _LIVE)

    async def find_by_oidc(self, issuer: str, subject: str, *, conn: AsyncConnection | None = None) -> Agent | None:
        """The agent linked to this IdP account, deleted or not, so a deleted agent's login is refused."""
        async with read_transaction(self._engine, conn) as c:
            return await self._one(c, agents.c.oidc_issuer == issuer, agents.c.oidc_subject == subject)

    async def find_by_email(self, email: str, *, conn: AsyncConnection | None = None) -> builtins.list[Agent]:
        """The live agents with this email, compared case-insensitively, by userName (several: it is ambiguous)."""
        if NUL in email:
            return []
        query = (
            select(agents).where(func.lower(agents.c.email) == email.lower(), _LIVE).order_by(agents.c.user_name_key)
        )
        async with read_transaction(self._engine, conn) as c:
            return [_agent(row) for row in (await c.execute(query)).mappings()]

    async def find(self, identifier: str, *, conn: AsyncConnection | None = None) -> Agent | None:
        """The live agent whose id, else whose userName, is ``identifier`` (admin API and CLI). Outside a
        transaction it is the quick reader's (two indexed lookups): a deprovisioning storm must not queue its
        first step, ending the sessions, behind the transactions of the calls before it."""
        if NUL in identifier:  # an admin's typo or a probe: no agent, not a database failure
            return None
        if conn is None and self._reads is not None:
            return (await self.find_many([identifier])).get(identifier)
        async with read_transaction(self._engine, conn) as c:
            return await self._one(c, agents.c.id == identifier, _LIVE) or await self._one(
                c, agents.c.user_name_key == user_name_key(identifier), _LIVE
            )

    async def find_many(self, identifiers: Sequence[str]) -> dict[str, Agent]:
        """:meth:`find` for several identifiers in one read (a deprovisioning storm's first kills); the ones not
        found are left out."""
        identifiers = [identifier for identifier in identifiers if NUL not in identifier]
        if not identifiers:
            return {}
        if self._reads is not None:
            return await self._reads.run(lambda c: _find_in(c, identifiers))
        async with read_transaction(self._engine) as c:
            return await c.run_sync(lambda sync: _find_in(sync, identifiers))

    async def list(
        self, limit: int = 100, offset: int = 0, *, conn: AsyncConnection | None = None
    ) -> builtins.list[Agent]:
        """Live agents ordered by userName."""
        query = select(agents).where(_LIVE).order_by(agents.c.user_name_key).limit(limit).offset(offset)
        async with read_transaction(self._engine, conn) as c:
            return [_agent(row) for row in (await c.execute(query)).mappings()]

    async def inactive_since(self, since: datetime, *, ids: Sequence[str] | None = None) -> builtins.list[Agent]:
        """Agents disabled or deleted, deleted or not, whose row changed at or after ``since`` (a superset of those
        made inactive since then), of ``ids`` if given: whose sessions a session store that lost writes may have
        brought back (gateway/deprovision/revived.py)."""
        query = select(agents).where(agents.c.active.is_(False), agents.c.updated_at >= to_db(since))
        if ids is not None:
            query = query.where(agents.c.id.in_(ids))
        async with read_transaction(self._engine) as c:
            return [_agent(row) for row in (await c.execute(query.order_by(agents.c.id))).mappings()]

    async def count_workforce(self, since: datetime, *, conn: AsyncConnection | None = None) -> int:
        """Agents that were not deleted before ``since``: the mass-deletion guard's denominator (agents deleted
        or disabled inside the window still count, they are the ones the window is about)."""
        query = (
            select(func.count())
            .select_from(agents)
            .where(or_(agents.c.deleted_at.is_(None), agents.c.deleted_at >= to_db(since)))
        )
        async with read_transaction(self._engine, conn) as c:
            return int((await c.execute(query)).scalar_one())

    async def link_or_create_from_login(
        self,
        issuer: str,
        subject: str,
        user_name: str,
        email: str | None,
        display_name: str | None,
        now: datetime,
        *,
        link_by: LinkRule,
        email_verified: bool,
        conn: AsyncConnection | None = None,
    ) -> Agent:
        """The agent for this (iss, sub); else the unlinked directory agent ``link_by`` names, linked now;
        else a new active agent, which keeps ``email`` only when ``email_verified``: an unverified address may be
        anyone's, and security events (``gateway/signals``) find agents by their stored email.

        Returns a deleted or disabled agent as found: the caller refuses the login (``Agent.may_sign_in``).
        Raises ``UserNameConflict`` when another live agent already holds ``user_name`` and ``AmbiguousLink``
        when the rule names more than one directory agent.
        """
        async with write_transaction(self._engine, conn) as c:
            linked = await self._one(c, agents.c.oidc_issuer == issuer, agents.c.oidc_subject == subject)
            if linked is not None:
                return linked
            verified_email = email if email_verified else None
            rule = _link_condition(link_by, subject, user_name, verified_email)
            if rule is not None:
                directory = await self._link_directory_agent(c, rule, issuer, subject, user_name)
                if directory is not None:
                    return directory
            holder = await self._one(c, agents.c.user_name_key == user_name_key(user_name), _LIVE)
            if holder is not None:
                # On PostgreSQL a concurrent first login of this account may have committed in between.
                if (holder.oidc_issuer, holder.oidc_subject) == (issuer, subject):
                    return holder
                raise _conflict(user_name)
            return await self._create(c, issuer, subject, user_name, verified_email, display_name, now)

    async def _link_directory_agent(
        self, conn: AsyncConnection, rule: ColumnElement[bool], issuer: str, subject: str, user_name: str
    ) -> Agent | None:
        """Claim the one unlinked live directory agent matching ``rule``; None when there is none.

        The UPDATE applies only while ``oidc_subject`` is still NULL, so of two concurrent logins naming the
        same agent exactly one links it; the other finds its own link (same account) or is refused. The SCIM
        representation does not change, so neither does the version (ETag) nor lastModified.
        """
        unlinked = (agents.c.source.in_(DIRECTORY_SOURCES), agents.c.oidc_subject.is_(None), _LIVE)
        found = (await conn.execute(select(agents.c.id).where(rule, *unlinked).limit(2))).scalars().all()
        if len(found) > 1:
            raise AmbiguousLink(
                "Your sign-in matches more than one account provisioned by your organisation; "
                "an administrator must link it.",
                detail=f"link rule matched {len(found)} unlinked directory agents",
            )
        if not found:
            return None
        claim = (
            update(agents)
            .where(agents.c.id == found[0], *unlinked)
            .values(oidc_issuer=issuer, oidc_subject=subject)
            .returning(*agents.c)
        )
        try:
            async with conn.begin_nested():
                row = (await conn.execute(claim)).mappings().first()
        except IntegrityError:
            row = None  # a concurrent login of this account linked or created another agent first
        if row is not None:
            return _agent(row)
        linked = await self._one(conn, agents.c.oidc_issuer == issuer, agents.c.oidc_subject == subject)
        if linked is not None:
            return linked
        raise _conflict(user_name)

    async def _create(
        self,
        conn: AsyncConnection,
        issuer: str,
        subject: str,
        user_name: str,
        email: str | None,
        display_name: str | None,
        now: datetime,
    ) -> Agent:
        moment = to_db(now)
        values: dict[str, Any] = {
            "id": str(uuid4()),
            "user_name": user_name,
            "user_name_key": user_name_key(user_name),
            "email": email,
            "display_name": display_name,
            "active": True,
            "oidc_issuer": issuer,
            "oidc_subject": subject,
            "source": "oidc",
            "attributes": {},
            "version": 1,
            "created_at": moment,
            "updated_at": moment,
        }
        try:
            async with conn.begin_nested():
                row = (await conn.execute(insert(agents).values(values).returning(*agents.c))).mappings().one()
        except IntegrityError:
            # A concurrent first login won the race: for the same account, return its agent.
            linked = await self._one(conn, agents.c.oidc_issuer == issuer, agents.c.oidc_subject == subject)
            if linked is not None:
                return linked
            raise _conflict(user_name) from None
        return _agent(row)

    async def set_active(
        self,
        agent_id: str,
        active: bool,
        reason: str | None,
        now: datetime,
        *,
        conn: AsyncConnection | None = None,
    ) -> Agent:
        """Enable or disable a live agent; ``reason`` is kept while disabled. Bumps the version (SCIM ETag). Making
        an inactive agent active stamps ``enabled_at`` (an already active one keeps its stamp)."""
        values: dict[str, Any] = {"active": active, "disabled_reason": None if active else reason}
        if active:
            values["enabled_at"] = case((agents.c.active.is_(False), to_db(now)), else_=agents.c.enabled_at)
        return await self._change(agent_id, values, now, conn)

    async def mark_deleted(
        self, agent_id: str, reason: str | None, now: datetime, *, conn: AsyncConnection | None = None
    ) -> Agent:
        """Soft-delete a live agent: it frees its userName for a rehire and keeps its (iss, sub) link,
        so the deleted account cannot sign in again and silently get a fresh agent."""
        return await self._change(
            agent_id,
            {"active": False, "deleted_at": to_db(now), "disabled_reason": reason},
            now,
            conn,
        )

    async def _change(
        self, agent_id: str, values: dict[str, Any], now: datetime, conn: AsyncConnection | None
    ) -> Agent:
        statement = (
            update(agents)
            .where(agents.c.id == agent_id, _LIVE)
            .values(**values, version=agents.c.version + 1, updated_at=to_db(now))
            .returning(*agents.c)
        )
        async with write_transaction(self._engine, conn) as c:
            row = (await c.execute(statement)).mappings().first()
        if row is None:
            raise NotFound(f"no agent with id {agent_id!r}")
        return _agent(row)


def _find_in(conn: Connection, identifiers: Sequence[str]) -> dict[str, Agent]:
    """:meth:`AgentRepository.find_many` on a synchronous connection (the quick reader's), in one round trip:
    for each identifier the live agent with this id, else the one with this userName."""
    keys = {user_name_key(identifier) for identifier in identifiers}
    where = or_(agents.c.id.in_(set(identifiers)), agents.c.user_name_key.in_(keys))
    found = [_agent(row) for row in conn.execute(select(agents).where(where, _LIVE)).mappings()]
    by_id = {agent.id: agent for agent in found}
    by_name = {user_name_key(agent.user_name): agent for agent in found}
    return {
        identifier: agent
        for identifier in identifiers
        if (agent := by_id.get(identifier) or by_name.get(user_name_key(identifier))) is not None
    }


def _link_condition(
    link_by: LinkRule, subject: str, user_name: str, verified_email: str | None
) -> ColumnElement[bool] | None:
    """The WHERE clause naming the directory agent this login belongs to, or None when the rule cannot apply."""
    if link_by == "external_id_is_sub":
        return agents.c.external_id == subject
    if link_by == "user_name_is_preferred_username":
        return agents.c.user_name_key == user_name_key(user_name)
    if verified_email is None:
        return None
    return agents.c.user_name_key == user_name_key(verified_email)


def _conflict(user_name: str) -> UserNameConflict:
    return UserNameConflict(
        f"the userName {user_name!r} already belongs to another agent; an administrator must link this sign-in to it",
        detail="first login refused: userName taken by an agent not linked to this (issuer, subject)",
    )
