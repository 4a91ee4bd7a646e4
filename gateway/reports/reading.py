"""The record that a report was built: a report reads personal data out of the access log (every data subject an
agent touched, every download of a month), so building one is itself recorded, strictly and first, as searching
the log is (``gateway/audit/search.py``; ISO 27001 A.8.15, PIPA safety-measure standard art. 8): no record, no
report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.audit.writer import AuditLog
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow

#: The longest agent identifier or month kept in the record (what was asked for, as typed).
MAX_NAMED = 256


@dataclass(frozen=True, slots=True)
class Reader:
    """Who asks for a report: ``cli:<login>`` or ``console:<userName>``, and from where when over HTTP."""

    actor: str
    source_ip: str | None = None
    request_id: str | None = None
    path: str | None = None


async def record_report_view(audit: AuditLog, reader: Reader, report: Literal["agent", "monthly"], named: str) -> None:
    """Record that ``reader`` is building ``report`` of ``named`` (an agent's id or userName, or a month
    ``YYYY-MM``); raises if the record cannot be written, before anything of the report is read."""
    key = "agent" if report == "agent" else "month"
    await audit.write(
        AccessRecord(
            time=utcnow(),
            kind="report_view",
            request_id=reader.request_id,
            source_ip=reader.source_ip,
            method="GET" if reader.path else None,
            path=reader.path,
            decision="allow",
            actor=reader.actor,
            action="view",
            detail={"report": report, key: named[:MAX_NAMED]},
        )
    )
