"""The month a review covers, in the review's time zone, cut into stretches of one UTC offset (pure).

PIPA's monthly review is about the handler's month and working hours, so "2026-11" in Asia/Seoul is
2026-11-01T00:00+09:00 up to 2026-12-01T00:00+09:00. The database groups by local day and hour with a constant
offset per query (SQLite has no time-zone database); a zone that changes its offset inside the month (DST) is
queried once per stretch of constant offset, and the stretches' counts are added up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.errors import BadRequest

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
#: Offset changes are found by stepping this far, then narrowed to the second (every real transition is on a
#: quarter hour; the narrowing makes that an observation, not an assumption).
_STEP = timedelta(minutes=15)


class InvalidMonth(BadRequest):
    """The month is not ``YYYY-MM``."""

    code = "invalid_month"


@dataclass(frozen=True, slots=True)
class Stretch:
    """``[start, end)`` in UTC, throughout which local time is UTC + ``offset_minutes``."""

    start: datetime
    end: datetime
    offset_minutes: int


@dataclass(frozen=True, slots=True)
class Month:
    label: str
    zone: str
    #: The month's first local midnight and the next month's, in UTC.
    start: datetime
    end: datetime
    stretches: tuple[Stretch, ...]

    @property
    def days(self) -> list[str]:
        """Every local day of the month, ``YYYY-MM-DD``."""
        first = self.start.astimezone(ZoneInfo(self.zone)).date()
        last = (self.end.astimezone(ZoneInfo(self.zone)) - timedelta(days=1)).date()
        return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def parse_month(month: str, zone: str) -> Month:
    """The month ``YYYY-MM`` in ``zone``; :class:`InvalidMonth` for anything else."""
    match = _MONTH.match(month.strip())
    if match is None:
        raise InvalidMonth(f"The month must be written YYYY-MM, such as 2026-11 (got {month[:20]!r}).")
    year, number = int(match[1]), int(match[2])
    tz = ZoneInfo(zone)
    following = (year + 1, 1) if number == 12 else (year, number + 1)
    try:
        start = datetime(year, number, 1, tzinfo=tz).astimezone(UTC)
        end = datetime(*following, 1, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError):  # 9999-12 ends in year 10000; 0001-01 east of UTC starts in year 0
        raise InvalidMonth(f"'month' {month.strip()} is outside the dates a review can cover in {zone}.") from None
    return Month(f"{year:04d}-{number:02d}", zone, start, end, stretches(start, end, tz))


def _offset(moment: datetime, tz: ZoneInfo) -> int:
    offset = moment.astimezone(tz).utcoffset()
    assert offset is not None
    return int(offset.total_seconds() // 60)


def stretches(start: datetime, end: datetime, tz: ZoneInfo) -> tuple[Stretch, ...]:
    """``[start, end)`` cut wherever ``tz`` changes its UTC offset."""
    found: list[Stretch] = []
    begin, offset = start, _offset(start, tz)
    probe = start
    while probe < end:
        following = min(probe + _STEP, end)
        if following < end and _offset(following, tz) != offset:
            low, high = probe, following  # offset(low) == offset, offset(high) differs: narrow to the second
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if _offset(middle, tz) == offset else (low, middle)
            found.append(Stretch(begin, high, offset))
            begin, offset = high, _offset(high, tz)
        probe = following
    found.append(Stretch(begin, end, offset))
    return tuple(found)
