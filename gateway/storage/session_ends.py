"""Logouts of agents who stay active, kept for the sweep after a session-store outage (``session_ends``).

Written when a logout is recorded (gateway/deprovision/logouts.py), read by the sweep (gateway/deprovision/
revived.py), pruned once older than the longest a session can live. A row names the session by its storage key
(the SHA-256 of the id, gateway/sessions/base.py ``session_key``), never by the id: a copy of the table is no
cookie.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from sqlalchemy import Connection, RowMapping, and_, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.quick_reads import QuickReads
from gateway.storage.schema import session_ends

log = logging.getLogger("channelgate.sessions")


class EndKind(Enum):
    """What a remembered logout ended."""

    #: One session (``/.channelgate/logout``), by its storage key.
    LOGOUT = "logout"
    #: The agent's sessions from one IdP session (back-channel logout naming ``sid``).
    IDP_SESSION = "idp_session"
    #: Every session the agent had (back-channel logout naming ``sub`` only, CAEP, the console's "end sessions").
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class SessionEnd:
    ended_at: datetime
    kind: EndKind
    agent_id: str
    session_key: str | None = None
    sid: str | None = None
    #: The row's id once saved (None for an end kept in process): a session lists the ends saved before it was created
    #: (``SessionData.after_ends``, by :func:`saved_key`), which therefore cannot have ended it.
    id: int | None = field(default=None, compare=False)  # storage's, not the end's: equal ends compare equal

    @property
    def saved_key(self) -> str | None:
        """How a session names this end once saved (None before): see :func:`saved_key`."""
        return None if self.id is None else saved_key(self.id, self.ended_at)


def saved_key(row_id: int, ended_at: datetime) -> str:
    """A saved end's name in ``SessionData.after_ends``: its row id *and* its time, since SQLite (no AUTOINCREMENT)
    gives a pruned highest row's id to the next end, and a restored backup re-issues ids on either database; a later
    end never has the same time in microseconds."""
    return f"{row_id}@{(ended_at - _EPOCH) // _MICROSECOND}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class SessionEndRepository:
    def __init__(self, engine: AsyncEngine, reads: QuickReads | None = None) -> None:
        self._engine = engine
        #: The hot-path reader (``gateway.storage.quick_reads``) for :meth:`may_cover`, asked on requests.
        self._reads = reads

    async def add(self, ends: Sequence[SessionEnd], conn: AsyncConnection | None = None) -> None:
        """Insert the rows (in ``conn``'s transaction when given, with the logout's access-log record)."""
        if not ends:
            return
        rows = [
            {
                "ended_at": to_db(end.ended_at),
                "kind": end.kind.value,
                "agent_id": end.agent_id,
                "session_key": end.session_key,
                "sid": end.sid,
            }
            for end in ends
        ]
        async with write_transaction(self._engine, conn) as tx:
            await tx.execute(insert(session_ends), rows)

    async def since(self, cutoff: datetime) -> list[SessionEnd]:
        """Every end at or after ``cutoff``, oldest first (by the ``ended_at`` index)."""
        query = select(session_ends).where(session_ends.c.ended_at >= to_db(cutoff))
        async with read_transaction(self._engine) as conn:
            rows = (await conn.execute(query.order_by(session_ends.c.ended_at, session_ends.c.id))).mappings().all()
        return [end for end in map(_parsed, rows) if end is not None]

    async def may_cover(
        self, agent_id: str, since: datetime, *, session_key: str, sid: str | None, created_after: datetime
    ) -> list[SessionEnd]:
        """``agent_id``'s ends at or after ``since`` that may have ended one session: the logout naming its storage
        key, and the ends of every session of the agent, and of its IdP session ``sid``, later than ``created_after``
        (the session's creation less the clock margin: a few at most). Asked for requests shortly after a
        session-store outage, inline on the event loop on SQLite (the quick reader's when there is one), so each is
        one range of an index that names it (migration 0010), never a scan of the agent's other logouts."""
        c = session_ends.c
        mine = (c.agent_id == agent_id, c.ended_at >= to_db(since))
        later = c.ended_at > to_db(created_after)
        latest = (c.ended_at.desc(),)
        queries = [
            select(session_ends).where(c.session_key == session_key, *mine).limit(1),
            # Every one, not the latest alone: the session may list the latest as read by its login
            # (``SessionData.after_ends``) while an earlier-stamped one, saved after it, did end it.
            select(session_ends).where(c.kind == EndKind.AGENT.value, later, *mine).order_by(*latest),
        ]
        if sid is not None:
            of_sid = (c.kind == EndKind.IDP_SESSION.value, c.sid == sid, later, *mine)
            queries.append(select(session_ends).where(*of_sid).order_by(*latest))

        def read(conn: Connection) -> list[RowMapping]:
            return [row for query in queries for row in conn.execute(query).mappings().all()]

        if self._reads is not None:
            rows = await self._reads.run(read)
        else:
            async with read_transaction(self._engine) as conn:
                rows = await conn.run_sync(read)
        return [end for end in map(_parsed, rows) if end is not None]

    async def saved_before_login(self, agent_id: str, since: datetime) -> tuple[str, ...]:
        """The :func:`saved_key` of ``agent_id``'s agent-wide and IdP-session ends saved (committed) now and ended at
        or after ``since``, read by a login before it creates its session (one lookup by the agent's index)."""
        c = session_ends.c
        query = select(c.id, c.ended_at).where(
            c.agent_id == agent_id,
            c.kind.in_([EndKind.AGENT.value, EndKind.IDP_SESSION.value]),
            c.ended_at >= to_db(since),
        )
        async with read_transaction(self._engine) as conn:
            rows = (await conn.execute(query.order_by(c.id))).all()
        return tuple(saved_key(int(row[0]), from_db(row[1])) for row in rows)

    async def ended_idp_session(self, sid: str, since: datetime, agent_id: str | None = None) -> bool:
        """Whether an end of the IdP session ``sid`` (of ``agent_id`` when given) was saved at or after ``since``."""
        query = select(session_ends.c.id).where(
            session_ends.c.ended_at >= to_db(since),
            session_ends.c.kind == EndKind.IDP_SESSION.value,
            session_ends.c.sid == sid,
        )
        if agent_id is not None:
            query = query.where(session_ends.c.agent_id == agent_id)
        async with read_transaction(self._engine) as conn:
            return (await conn.execute(query.limit(1))).first() is not None

    async def ended_for_sign_in(
        self, agent_id: str, sid: str | None, *, since: datetime, agent_wide_since: datetime
    ) -> EndKind | None:
        """Whether an end reaches a session ``agent_id`` signs in with from the IdP session ``sid``: one of that IdP
        session saved at or after ``since``, or one of every session of the agent at or after ``agent_wide_since``;
        its kind (``IDP_SESSION`` first: it names the sign-in's own IdP session), or None."""
        c = session_ends.c
        kinds = and_(c.kind == EndKind.AGENT.value, c.ended_at >= to_db(agent_wide_since))
        if sid is not None:
            kinds = or_(kinds, and_(c.kind == EndKind.IDP_SESSION.value, c.sid == sid, c.ended_at >= to_db(since)))
        query = select(c.kind).where(c.agent_id == agent_id, kinds).distinct()
        async with read_transaction(self._engine) as conn:
            found = {row[0] for row in await conn.execute(query)}
        for kind in (EndKind.IDP_SESSION, EndKind.AGENT):
            if kind.value in found:
                return kind
        return None

    async def prune(self, before: datetime) -> int:
        """Delete the ends older than ``before``; how many."""
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(delete(session_ends).where(session_ends.c.ended_at < to_db(before)))
        return int(result.rowcount or 0)


def _parsed(row: RowMapping) -> SessionEnd | None:
    """The row's end; None (logged) for one this release cannot read, such as a kind written by a newer release
    before a rollback: skipped, so it cannot stop the sweep that reads the others."""
    try:
        kind = EndKind(row["kind"])
    except ValueError:
        log.error("skipped session end %s: unknown kind %r (written by a newer release?)", row["id"], row["kind"])
        return None
    if (kind is EndKind.LOGOUT and not row["session_key"]) or (kind is EndKind.IDP_SESSION and not row["sid"]):
        log.error("skipped session end %s: a %s end without its %s", row["id"], kind.value,
                  "session_key" if kind is EndKind.LOGOUT else "sid")  # fmt: skip
        return None
    return SessionEnd(from_db(row["ended_at"]), kind, row["agent_id"], row["session_key"], row["sid"], row["id"])
