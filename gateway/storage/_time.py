"""Timestamps cross the database boundary as aware UTC.

SQLite's DATETIME keeps no offset, so values are converted to UTC before they are written and read back as UTC;
PostgreSQL's ``timestamptz`` does the same natively. A naive ``now`` is refused rather than guessed.
"""

from __future__ import annotations

from datetime import UTC, datetime


def to_db(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (pass datetime.now(UTC))")
    return moment.astimezone(UTC)


def from_db(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
