"""What every export format shares: control characters made visible, and how bad a record is.

Log injection (CWE-117, ASVS 5.0 §16.4.1): a userName or a path is chosen by whoever sends the request, so it may
hold CR/LF (a forged second record), NUL (a truncated one), ESC sequences (a rewritten terminal line) or Unicode
line and bidi controls (a record that reads differently from how it parses: "Trojan Source", CVE-2021-42574).
Each format escapes its own delimiters; the characters below are escaped by every format.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import IntEnum
from importlib import metadata

from gateway.storage.access_log import AccessRecord

#: C0 controls (CR, LF, NUL, ESC ...), DEL, C1 controls, U+2028/U+2029 (line breaks to JavaScript and some
#: viewers), the bidi embeddings, overrides and isolates, and U+FEFF (a BOM where RFC 5424 looks for one).
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _code(match: re.Match[str]) -> str:
    point = ord(match.group())
    return f"\\x{point:02x}" if point <= 0xFF else f"\\u{point:04x}"


def visible(text: str) -> str:
    """``text`` with each control character written as ``\\xHH`` (``\\uHHHH`` above U+00FF).

    Only sound where the format escapes the backslash itself first, so that ``\\x1b`` in the output can only
    come from an escaped character, never from the text."""
    return CONTROLS.sub(_code, text)


def rfc3339(moment: datetime) -> str:
    """UTC with microseconds and ``Z`` (RFC 3339 §5.6; RFC 5424 §6.2.3 allows at most 6 fraction digits)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, in integers (a float product can land one millisecond short)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def product_version() -> str:
    try:
        return metadata.version("channelgate")
    except metadata.PackageNotFoundError:
        return "0"


PRODUCT = "channelgate"
VERSION = product_version()


class Level(IntEnum):
    """How much a record matters to a security reviewer (mapped to each format's own scale)."""

    INFO = 0
    NOTICE = 1
    WARNING = 2


#: Decisions that refused something, or a step that ended badly.
_REFUSED = frozenset({"deny", "refused", "failed", "dead", "blocked", "attention"})
#: Kinds that are a failure whatever their decision.
_FAILED_KINDS = frozenset({"login_failed", "deprovision_attention"})
#: Kinds that are security relevant even when they succeed (access ended, an admin read the log).
_NOTABLE_KINDS = frozenset({"deprovision", "sessions_revoked", "security_event", "deprovision_held", "audit_search"})


def failed(record: AccessRecord) -> bool:
    return record.kind in _FAILED_KINDS or (record.decision or "") in _REFUSED


def level(record: AccessRecord) -> Level:
    """A refusal is a warning (someone tried what they may not); a removal of access, a notice; the rest, info."""
    if failed(record):
        return Level.WARNING
    if record.kind in _NOTABLE_KINDS or record.kind.startswith("deprovision"):
        return Level.NOTICE
    return Level.INFO


def outcome(record: AccessRecord) -> str | None:
    """``success`` or ``failure`` where the record says; None when it does not (a record without a decision)."""
    if failed(record):
        return "failure"
    if record.decision is not None or (record.status is not None and record.status < 400):
        return "success"
    return None
