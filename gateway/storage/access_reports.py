"""The access log's aggregations for the security reports (``gateway/reports``), in SQL on SQLite and PostgreSQL.

Every query is bounded by an agent (``ix_access_log_agent_time``) or a time range (``ix_access_log_time``) and
groups in the database: a month of records is never loaded into Python to be counted. Lists that a reviewer must
see record by record (downloads to explain, access after a disable) are capped, and their full count is known
beside them (counted here, or by :func:`activity`), so a report can say when it shows only part.

Local days and hours (the review's time zone) are computed in SQL with a constant UTC offset per query; the caller
queries a month once per stretch of constant offset (``gateway.reports.period``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Integer,
    RowMapping,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage._time import from_db, to_db
from gateway.storage.access_log import AccessRecord
from gateway.storage.schema import access_log, agents, deprovision_runs

#: The actions that take personal data out of the console (PIPA: downloads must be explained).
OUTBOUND = ("download", "export")
#: Access-log kinds that are receipts of deprovisioning (``gateway/deprovision``).
RECEIPT_KINDS = (
    "deprovision",
    "sessions_revoked",
    "deprovision_step",
    "deprovision_held",
    "deprovision_approved",
    "deprovision_retried",
    "deprovision_complete",
    "deprovision_attention",
)
#: Records that are access granted to an agent: proxied requests and logins, when allowed.
ACCESS_KINDS = ("request", "login")

_c = access_log.c
_outbound = case((_c.action.in_(OUTBOUND), 1), else_=0)
_denied = case((_c.decision == "deny", 1), else_=0)
_allowed_access = and_(_c.kind.in_(ACCESS_KINDS), _c.decision == "allow")


def _record(row: RowMapping | Mapping[str, Any]) -> AccessRecord:
    values: dict[str, Any] = {str(key): row[key] for key in row}
    values["time"] = from_db(values["time"])
    return AccessRecord(**values)


def _moment(value: Any) -> datetime:
    """An aggregate's timestamp: SQLite returns MIN/MAX of a DATETIME column as text."""
    return from_db(datetime.fromisoformat(value) if isinstance(value, str) else value)


# -- local time in SQL ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalClock:
    """Expressions for the local day, minute of day and weekday of ``access_log.time`` at a constant UTC offset.

    The offset and formats are rendered as SQL literals (an ``int`` and constants, never user text), so the
    same expression in SELECT and GROUP BY is textually identical, as PostgreSQL requires."""

    dialect: str
    offset_minutes: int

    def _sqlite(self, fmt: str) -> ColumnElement[Any]:
        return func.strftime(literal_column(f"'{fmt}'"), _c.time, literal_column(f"'{self.offset_minutes:+d} minutes'"))

    def _shifted(self) -> ColumnElement[Any]:
        return func.timezone(literal_column("'UTC'"), _c.time) + literal_column(
            f"interval '{self.offset_minutes:d} minutes'"
        )

    def day(self) -> ColumnElement[Any]:
        if self.dialect == "sqlite":
            return self._sqlite("%Y-%m-%d")
        return func.to_char(self._shifted(), literal_column("'YYYY-MM-DD'"))

    def minute_of_day(self) -> ColumnElement[Any]:
        if self.dialect == "sqlite":
            return cast(self._sqlite("%H"), Integer) * 60 + cast(self._sqlite("%M"), Integer)
        shifted = self._shifted()
        return cast(extract("hour", shifted), Integer) * 60 + cast(extract("minute", shifted), Integer)

    def weekday(self) -> ColumnElement[Any]:
        """0 = Sunday … 6 = Saturday (SQLite ``%w``, PostgreSQL ``dow``)."""
        if self.dialect == "sqlite":
            return cast(self._sqlite("%w"), Integer)
        return cast(extract("dow", self._shifted()), Integer)


# -- when access had to stop ---------------------------------------------------------------------------------


def _disables(table: FromClause, agent_id: ColumnElement[Any] | str) -> tuple[ColumnElement[bool], ...]:
    return table.c.agent_id == agent_id, table.c.kind == "deprovision", table.c.decision == "disabled"


def _spell(table: FromClause, agent_id: ColumnElement[Any] | str) -> tuple[ColumnElement[bool], ...]:
    """The disable records of the agent's current disabled spell in ``table``: the first of them is when access had
    to stop. A disable repeated while the agent is already disabled (an admin repeating the command, SCIM DELETE
    after ``active=false``) writes a later record; taking that one would hide access allowed between the two.

    The spell began at the first disable after the agent was last made active. The log says so in two ways: an LDAP
    ``reactivate`` record, and a deprovisioning run, which starts only when an active agent is disabled (or on its
    first disable ever; a repeated disable joins the latest run), so the disable that began the latest run began
    the spell unless a reactivation came later. A SCIM re-enable writes no record of its own: an agent re-enabled
    by SCIM and disabled again while its earlier run is still going is judged from the earlier disable, which can
    only flag more access, never hide it."""
    runs = deprovision_runs
    run_started = (
        select(runs.c.created_at)
        .where(runs.c.agent_id == agent_id)
        .order_by(runs.c.created_at.desc())
        .limit(1)
        .correlate_except(runs)
        .scalar_subquery()
    )
    starts = access_log.alias("run_disables")
    # The run is queued in the transaction of the disable that started it, at or after that record's time.
    run_disable = (
        select(starts.c.time)
        .where(*_disables(starts, agent_id), starts.c.time <= run_started)
        .order_by(starts.c.time.desc())
        .limit(1)
        .correlate_except(starts)
        .scalar_subquery()
    )
    made_active = access_log.alias("reactivations")
    reactivated = (
        select(made_active.c.time)
        .where(made_active.c.agent_id == agent_id, made_active.c.kind == "ldap", made_active.c.decision == "reactivate")
        .order_by(made_active.c.time.desc())
        .limit(1)
        .correlate_except(made_active)
        .scalar_subquery()
    )
    return (
        *_disables(table, agent_id),
        or_(run_disable.is_(None), table.c.time >= run_disable),
        or_(reactivated.is_(None), table.c.time > reactivated),
    )


async def spell_disable(conn: AsyncConnection, agent_id: str) -> AccessRecord | None:
    """The disable record from which the agent's access had to stop (:func:`_spell`), if any."""
    query = select(access_log).where(*_spell(access_log, agent_id)).order_by(_c.time, _c.seq).limit(1)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else _record(row)


# -- one agent ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelActivity:
    channel: str | None
    first: datetime
    last: datetime
    requests: int
    downloads: int
    denied: int
    subjects: int


@dataclass(frozen=True, slots=True)
class SubjectCount:
    channel: str | None
    subject: str
    requests: int
    downloads: int


async def channel_activity(conn: AsyncConnection, agent_id: str) -> list[ChannelActivity]:
    """The agent's proxied requests per channel: first and last, counts, distinct data subjects."""
    query = (
        select(
            _c.channel,
            func.min(_c.time),
            func.max(_c.time),
            func.count(),
            func.sum(_outbound),
            func.sum(_denied),
            func.count(func.distinct(_c.subject)),
        )
        .where(_c.agent_id == agent_id, _c.kind == "request")
        .group_by(_c.channel)
        .order_by(_c.channel)
    )
    return [
        ChannelActivity(channel, _moment(first), _moment(last), int(n), int(out or 0), int(denied or 0), int(subs))
        for channel, first, last, n, out, denied, subs in (await conn.execute(query)).all()
    ]


async def subjects_touched(conn: AsyncConnection, agent_id: str, limit: int) -> list[SubjectCount]:
    """The data subjects of the agent's requests per channel, most requested first, at most ``limit``."""
    count = func.count()
    query = (
        select(_c.channel, _c.subject, count, func.sum(_outbound))
        .where(_c.agent_id == agent_id, _c.kind == "request", _c.subject.is_not(None))
        .group_by(_c.channel, _c.subject)
        .order_by(count.desc(), _c.channel, _c.subject)
        .limit(limit)
    )
    return [
        SubjectCount(channel, subject, int(n), int(out or 0))
        for channel, subject, n, out in (await conn.execute(query)).all()
    ]


async def receipts(conn: AsyncConnection, agent_id: str) -> list[AccessRecord]:
    """Every deprovisioning receipt of the agent in the access log, oldest first."""
    query = select(access_log).where(_c.agent_id == agent_id, _c.kind.in_(RECEIPT_KINDS)).order_by(_c.time, _c.seq)
    return [_record(row) for row in (await conn.execute(query)).mappings()]


async def allowed_after(
    conn: AsyncConnection, agent_id: str, since: datetime, limit: int
) -> tuple[int, list[AccessRecord]]:
    """Allowed requests and logins of the agent whose record is later than ``since``: how many, and the first
    ``limit``. A request's record is written when it ends, so this includes requests let in before ``since`` and
    still running at it (``gateway.reports.zero_access.split_at_disable`` tells them apart)."""
    where = (_c.agent_id == agent_id, _c.time > to_db(since), _allowed_access)
    total = int((await conn.execute(select(func.count()).where(*where))).scalar_one())
    rows = await conn.execute(select(access_log).where(*where).order_by(_c.time, _c.seq).limit(limit))
    return total, [_record(row) for row in rows.mappings()]


async def deleted_agent_id(conn: AsyncConnection, user_name_key: str) -> str | None:
    """The id of the most recently deleted agent with this userName key (an offboarded agent's report)."""
    query = (
        select(agents.c.id)
        .where(agents.c.user_name_key == user_name_key, agents.c.deleted_at.is_not(None))
        .order_by(agents.c.deleted_at.desc())
        .limit(1)
    )
    value = (await conn.execute(query)).scalar_one_or_none()
    return None if value is None else str(value)


# -- one month ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Activity:
    """Requests of one agent on one local day at one channel, inside or outside business hours."""

    agent_id: str | None
    agent_name: str | None
    day: str
    channel: str | None
    after_hours: bool
    requests: int
    downloads: int
    denied: int
    first: datetime
    last: datetime


@dataclass(frozen=True, slots=True)
class DisabledAccess:
    record: AccessRecord
    disabled_at: datetime
    #: The agent's first session kill (``sessions_revoked``) at or after ``disabled_at``, if any.
    killed_at: datetime | None


def _between(start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(_c.time >= to_db(start), _c.time < to_db(end))


def _number(value: int) -> ColumnElement[Any]:
    """An ``int`` as an SQL literal: the after-hours expression is grouped on, and PostgreSQL matches GROUP BY to
    SELECT only when both are the same text (bound parameters get different numbers)."""
    return literal_column(str(int(value)))


async def activity(
    conn: AsyncConnection,
    start: datetime,
    end: datetime,
    clock: LocalClock,
    business: tuple[int, int],
    weekdays: Sequence[int],
) -> list[Activity]:
    """Requests in ``[start, end)`` (one offset) per agent, local day, channel and after hours or not: the one pass
    over the month the review's volume, after-hours and per-channel figures are added up from. After hours is
    before local minute ``business[0]``, from ``business[1]`` on, or on a day not in ``weekdays`` (0 = Sunday)."""
    day, minute = clock.day(), clock.minute_of_day()
    outside = or_(
        not_(clock.weekday().in_([_number(w) for w in weekdays])) if weekdays else true(),
        minute < _number(business[0]),
        minute >= _number(business[1]),
    )
    late = case((outside, 1), else_=0)
    query = (
        select(
            _c.agent_id,
            func.max(_c.agent_name),
            day,
            _c.channel,
            late,
            func.count(),
            func.sum(_outbound),
            func.sum(_denied),
            func.min(_c.time),
            func.max(_c.time),
        )
        .where(_between(start, end), _c.kind == "request")
        .group_by(_c.agent_id, day, _c.channel, late)
    )
    return [
        Activity(agent_id, name, str(d), channel, bool(out_of_hours), int(n), int(out or 0), int(denied or 0),
                 _moment(first), _moment(last))
        for agent_id, name, d, channel, out_of_hours, n, out, denied, first, last in (await conn.execute(query)).all()
    ]  # fmt: skip


async def outbound_records(conn: AsyncConnection, start: datetime, end: datetime, limit: int) -> list[AccessRecord]:
    """The first ``limit`` downloads and exports in ``[start, end)`` by agent and time (their count is the sum of
    :func:`activity`'s downloads: the same records, counted in the same pass)."""
    where = (_between(start, end), _c.kind == "request", _c.action.in_(OUTBOUND))
    query = select(access_log).where(*where).order_by(_c.agent_name, _c.agent_id, _c.time, _c.seq).limit(limit)
    return [_record(row) for row in (await conn.execute(query)).mappings()]


async def disabled_access(
    conn: AsyncConnection, start: datetime, end: datetime, limit: int
) -> tuple[int, list[DisabledAccess]]:
    """Access granted in ``[start, end)`` to agents that are disabled (or deleted) now, after the first disable
    record of their current disabled spell (:func:`_spell`): the PIPA review's "access by a disabled agent"."""
    spells = access_log.alias("disables")
    disabled_at = (
        select(spells.c.time).where(*_spell(spells, agents.c.id)).order_by(spells.c.time).limit(1).scalar_subquery()
    )
    # Materialised (SQLite >= 3.35, PostgreSQL >= 12): each disabled agent's disable time is looked up once, not
    # once per request of the month joined to it.
    disabled = (
        select(agents.c.id.label("agent_id"), disabled_at.label("disabled_at"))
        .where(or_(agents.c.active == false(), agents.c.deleted_at.is_not(None)))
        .cte("disabled_agents")
        .prefix_with("MATERIALIZED")
    )
    where = (
        _between(start, end),
        _allowed_access,
        _c.agent_id == disabled.c.agent_id,
        _c.time > disabled.c.disabled_at,
    )
    joined = access_log.join(disabled, _c.agent_id == disabled.c.agent_id)
    total = int((await conn.execute(select(func.count()).select_from(joined).where(*where))).scalar_one())
    if not total:
        return 0, []  # the expected answer, found by the agent index alone (the listing below reads the month)
    kills = access_log.alias("kills")
    # The kill that followed the disable, not a later one: a request still open after it is access after the disable.
    killed_at = (
        select(kills.c.time)
        .where(
            kills.c.agent_id == disabled.c.agent_id,
            kills.c.kind == "sessions_revoked",
            kills.c.time >= disabled.c.disabled_at,
        )
        .order_by(kills.c.time)
        .limit(1)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(access_log, disabled.c.disabled_at.label("_disabled_at"), killed_at.label("_killed_at"))
        .select_from(joined)
        .where(*where)
        .order_by(_c.time, _c.seq)
        .limit(limit)
    )
    found = []
    for row in rows.mappings():
        values = {key: row[key] for key in row if key not in ("_disabled_at", "_killed_at")}
        killed = row["_killed_at"]
        found.append(
            DisabledAccess(_record(values), _moment(row["_disabled_at"]), None if killed is None else _moment(killed))
        )
    return total, found
