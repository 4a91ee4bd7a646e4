"""Active Directory's ``accountExpires``, with no I/O: when an account stops being allowed to log on.

The value is a Windows FILETIME, 100-nanosecond intervals since 1601-01-01 UTC, as a Large Integer
(MS-ADA1 §2.1 Attribute accountExpires, syntax 2.5.5.16); 0 and 0x7FFFFFFFFFFFFFFF both mean "never". The
domain controller refuses a logon once its clock reaches the value; the sync compares it with its own clock at
each sync, because an expiry passes without the entry changing (no ``whenChanged``, no change-feed event).
Active Directory Users and Computers' "end of 14 July" is 15 July 00:00 local time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

#: The two values Active Directory writes for an account that never expires (MS-ADA1 §2.1).
NEVER = frozenset({0, 0x7FFF_FFFF_FFFF_FFFF})
#: FILETIME's epoch.
EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
#: A Large Integer is a signed 64-bit number; a negative expiry means nothing, so digits only (at most 19).
_FILETIME = re.compile(r"[0-9]{1,19}")
#: How much of an unreadable value a conflict quotes.
_SHOWN = 40


def parse_account_expires(value: str | None) -> datetime | None:
    """When the account expires (UTC); None when it never does (no value, 0, 0x7FFFFFFFFFFFFFFF, or a moment
    past year 9999, which no clock here reaches). Raises ``ValueError`` naming the value when it is not a
    FILETIME, so that the caller can report it rather than guess."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _FILETIME.fullmatch(text) is None or int(text) > 0x7FFF_FFFF_FFFF_FFFF:
        shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
        raise ValueError(
            f"accountExpires {shown!r} is not a Windows FILETIME (100-ns intervals since 1601-01-01 UTC; 0 or "
            "9223372036854775807 for never): the account is neither disabled nor made active by it until the "
            "directory holds a readable value"
        )
    ticks = int(text)
    if ticks in NEVER:
        return None
    try:
        return EPOCH + timedelta(microseconds=ticks // 10)
    except OverflowError:
        return None


def expired_reason(expires: datetime | None, now: datetime) -> str | None:
    """The reason for the access log once ``now`` has reached ``expires``; None before, or without an expiry."""
    if expires is None or expires > now:
        return None
    return f"expired in the directory (accountExpires {expires:%Y-%m-%dT%H:%M:%SZ})"
