"""The log search form: query parameters → ``AccessQuery`` and back, and the keyset cursor (pure).

Times in the form are UTC (``datetime-local`` inputs carry no zone, so the page says UTC next to them). The
cursor is the (time, seq) of a page's last record, so the next page is one index range scan, never an OFFSET.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.errors import BadRequest
from gateway.storage.access_log import AccessQuery, AccessRecord

PAGE_SIZE = 50
#: Free-text filters, each matched exactly against its column.
TEXT_FILTERS = ("agent", "channel", "subject", "action", "decision", "kind")
_MAX_VALUE = 256


@dataclass(frozen=True, slots=True)
class SearchForm:
    """What the reviewer asked for, as typed (kept to refill the form and build the next page's link)."""

    values: Mapping[str, str]
    since: datetime | None
    until: datetime | None
    before: tuple[datetime, int] | None

    def query(self, *, agent_id: str | None, agent_name: str | None, limit: int) -> AccessQuery:
        """The repository query; the agent filter was resolved to an id (or a recorded name) by the caller."""
        return AccessQuery(
            agent_id=agent_id,
            agent_name=agent_name,
            channel=self.values.get("channel") or None,
            subject=self.values.get("subject") or None,
            action=self.values.get("action") or None,
            decision=self.values.get("decision") or None,
            kind=self.values.get("kind") or None,
            since=self.since,
            until=self.until,
            before=self.before,
            limit=limit,
        )

    def next_page(self, last: AccessRecord) -> dict[str, str]:
        """Query parameters of the page after ``last``: the same filters and a cursor."""
        params = {key: value for key, value in self.values.items() if value}
        params["before"] = cursor(last)
        return params


def _time(name: str, text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"'{name}' must be a date and time like 2026-12-04T09:30 (UTC).") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def cursor(record: AccessRecord) -> str:
    return f"{record.time.astimezone(UTC).isoformat()}_{record.seq}"


def parse_cursor(text: str) -> tuple[datetime, int]:
    moment, _, seq = text.rpartition("_")
    try:
        parsed = datetime.fromisoformat(moment)
        number = int(seq)
    except ValueError:
        raise BadRequest("The page link is damaged; start the search again.") from None
    if parsed.tzinfo is None:
        raise BadRequest("The page link is damaged; start the search again.")
    return parsed.astimezone(UTC), number


def parse_search(params: Mapping[str, str]) -> SearchForm:
    """Read the form; raise ``BadRequest`` naming the field a person has to fix."""
    values: dict[str, str] = {}
    for name in (*TEXT_FILTERS, "since", "until"):
        value = params.get(name, "").strip()
        if len(value) > _MAX_VALUE:
            raise BadRequest(f"'{name}' is too long (at most {_MAX_VALUE} characters).")
        values[name] = value
    since, until = _time("since", values["since"]), _time("until", values["until"])
    if since is not None and until is not None and since >= until:
        raise BadRequest("'since' must be earlier than 'until'.")
    before = params.get("before", "")
    return SearchForm(values, since, until, parse_cursor(before) if before else None)
