"""Searching and exporting the access log, for the CLI, the admin API and the console alike.

Filters arrive as text (command-line options, query parameters, the console's form) and are checked here once: a
bad value is a ``BadRequest`` that says what is expected. The agent filter takes an agent id or a userName: an
agent found by either (a deleted one by its id) is matched by id, so a renamed agent's older records are found too;
a name nobody holds any more (a deleted agent's) is matched against the userName recorded in each record. Results
come newest first, a page at a time, by keyset (``before`` = the (time, seq) of a page's last record, never an
OFFSET): an export reads page after page and never holds the log.

Reading the log is itself recorded (``audit_search``, ``audit_export``; ISO 27001 A.8.15 asks that access to logs
be logged), written strictly before the first record is shown: no record, no search.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.audit.formats import Formatter
from gateway.audit.formats._common import CONTROLS, rfc3339
from gateway.audit.writer import AuditLog
from gateway.errors import BadRequest
from gateway.storage.access_log import AccessLogRepository, AccessQuery, AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.timeutil import utcnow

TEXT_FILTERS = ("agent", "channel", "subject", "action", "decision", "kind")
FILTERS = (*TEXT_FILTERS, "since", "until")
ACTIONS = ("view", "change", "download", "export")
MAX_VALUE = 256
#: Records per page of an export (each page is one index range scan).
EXPORT_PAGE = 1000
#: The largest ``seq`` a cursor may name: the access log's key is a signed 64-bit integer.
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Search:
    """A validated search: the filters as given, the time range, the page size and the cursor."""

    filters: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    before: tuple[datetime, int] | None = None

    def described(self) -> dict[str, str]:
        """The filters for the record of this search (times in RFC 3339)."""
        described = dict(self.filters)
        if self.since is not None:
            described["since"] = rfc3339(self.since)
        if self.until is not None:
            described["until"] = rfc3339(self.until)
        return described


def _moment(name: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
        # OverflowError: a time whose UTC form falls before year 1 or after 9999 (0001-01-01T00:00+01:00).
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"{name!r} must be an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T09:30:00+09:00 "
            "(without an offset it is UTC), from year 1 to 9999 in UTC."
        ) from None


def parse_search(values: Mapping[str, str | None], *, max_limit: int = 1000, default_limit: int = 100) -> Search:
    """Check the filters, time range, limit and cursor given as text; raise ``BadRequest`` naming the bad one."""
    unknown = sorted(set(values) - {*FILTERS, "limit", "before", "format"})
    if unknown:
        raise BadRequest(f"Unknown filter {unknown[0]!r}; the filters are {', '.join(FILTERS)}, limit and before.")
    filters: dict[str, str] = {}
    for name in TEXT_FILTERS:
        value = values.get(name)
        if value is None or value == "":
            continue
        if len(value) > MAX_VALUE or CONTROLS.search(value):
            raise BadRequest(f"{name!r} must be at most {MAX_VALUE} characters, without control characters.")
        filters[name] = value
    if "action" in filters and filters["action"] not in ACTIONS:
        raise BadRequest(f"'action' must be one of {', '.join(ACTIONS)}.")
    since_text, until_text = values.get("since"), values.get("until")
    since = _moment("since", since_text) if since_text else None
    until = _moment("until", until_text) if until_text else None
    if since is not None and until is not None and since >= until:
        raise BadRequest("'since' must be before 'until'.")
    limit = default_limit
    if values.get("limit"):
        text = values["limit"] or ""
        # isascii: str.isdigit() is true for '²' and other digits int() refuses.
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= max_limit:
            raise BadRequest(f"'limit' must be a whole number from 1 to {max_limit}.")
        limit = int(text)
    before = decode_cursor(values["before"] or "") if values.get("before") else None
    return Search(filters, since, until, limit, before)


def encode_cursor(record: AccessRecord) -> str:
    """An opaque cursor for the page after ``record`` (its time and seq)."""
    return base64.urlsafe_b64encode(f"{rfc3339(record.time)}/{record.seq}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, int]:
    """The (time, seq) of ``encode_cursor``; a time without an offset was not written by it (nor read as local)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        moment, _, seq = raw.partition("/")
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None or not (seq.isascii() and seq.isdigit()) or int(seq) > MAX_SEQ:
            raise ValueError(moment)
        return parsed.astimezone(UTC), int(seq)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            "'before' is not a cursor a search gave out; use the one given with the previous page."
        ) from None


async def to_query(search: Search, agents: AgentRepository) -> AccessQuery:
    """The repository query: the agent filter resolved to a live agent's id or userName, else to a deleted agent's
    id, else kept as a recorded userName."""
    agent_id = agent_name = None
    wanted = search.filters.get("agent")
    if wanted is not None:
        agent = await agents.find(wanted) or await agents.get_any(wanted)
        if agent is not None:
            agent_id = agent.id
        else:
            agent_name = wanted
    return AccessQuery(
        agent_id=agent_id,
        agent_name=agent_name,
        channel=search.filters.get("channel"),
        subject=search.filters.get("subject"),
        action=search.filters.get("action"),
        decision=search.filters.get("decision"),
        kind=search.filters.get("kind"),
        since=search.since,
        until=search.until,
        before=search.before,
        limit=search.limit,
    )


async def records(
    repository: AccessLogRepository, query: AccessQuery, *, page: int = EXPORT_PAGE
) -> AsyncIterator[AccessRecord]:
    """Every record matching ``query`` (its ``limit`` ignored), newest first, one page in memory at a time."""
    cursor = query.before
    while True:
        batch = await repository.search(replace(query, before=cursor, limit=page))
        for record in batch:
            yield record
        if len(batch) < page:
            return
        last = batch[-1]
        assert last.seq is not None
        cursor = (last.time, last.seq)


async def export_lines(repository: AccessLogRepository, query: AccessQuery, formatter: Formatter) -> AsyncIterator[str]:
    """The matching records in ``formatter``'s format, one line each (newline included)."""
    async for record in records(repository, query):
        yield formatter.format(record) + "\n"


async def record_reading(
    audit: AuditLog,
    search: Search,
    *,
    actor: str,
    export_format: str | None = None,
    source_ip: str | None = None,
    request_id: str | None = None,
    path: str | None = None,
) -> None:
    """Record that ``actor`` searched (or exported) the log, strictly: raises if the record cannot be written."""
    detail: dict[str, Any] = {"filters": search.described()}
    if export_format is not None:
        detail["format"] = export_format
    else:
        detail["limit"] = search.limit
    await audit.write(
        AccessRecord(
            time=utcnow(),
            kind="audit_search" if export_format is None else "audit_export",
            request_id=request_id,
            source_ip=source_ip,
            method="GET" if path else None,
            path=path,
            decision="allow",
            actor=actor,
            subject=search.filters.get("subject"),
            action="export" if export_format is not None else "view",
            detail=detail,
        )
    )
