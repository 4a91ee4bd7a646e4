"""Export formats of the access log: JSON Lines, CEF, RFC 5424 syslog and OCSF.

Each ``Formatter`` turns one record into one line of text without a line break (every format escapes CR, LF and
the other control characters), so records can be joined by ``\\n`` in a file or an HTTPS body, or framed by octet
counting over syslog (RFC 6587 §3.4.1) without one record ever being read as two.
"""

from __future__ import annotations

from typing import Protocol

from gateway.audit.formats.cef import Cef
from gateway.audit.formats.jsonl import JsonLines
from gateway.audit.formats.ocsf import Ocsf
from gateway.audit.formats.syslog import DOCUMENTATION_PEN, Syslog
from gateway.storage.access_log import AccessRecord


class Formatter(Protocol):
    name: str
    #: Content-Type of a body of records joined by ``\n``.
    media_type: str

    def format(self, record: AccessRecord) -> str: ...


FORMATS: dict[str, Formatter] = {
    "jsonl": JsonLines(),
    "cef": Cef(),
    "syslog": Syslog(),
    "ocsf": Ocsf(),
}


def formatter(name: str, *, syslog_enterprise_number: int = DOCUMENTATION_PEN) -> Formatter:
    """The formatter called ``name``; the syslog one with the configured enterprise number in its SD-ID."""
    if name == "syslog":
        return Syslog(enterprise_number=syslog_enterprise_number)
    return FORMATS[name]


__all__ = ["FORMATS", "Formatter", "formatter"]
