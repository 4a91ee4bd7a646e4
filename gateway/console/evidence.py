"""The evidence the console shows but does not compute: the reports (``gateway/reports``) and the chain's status
(``gateway/audit/status.py``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from markupsafe import Markup

from gateway.audit import status as audit_status
from gateway.reports.agent import build_agent_report
from gateway.reports.monthly import build_monthly_report
from gateway.reports.reading import Reader, record_report_view
from gateway.reports.render import render_agent_html, render_monthly_html
from gateway.services import Services

_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def previous_month() -> str:
    now = datetime.now(UTC)
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return f"{year:04d}-{month:02d}"


def valid_month(text: str) -> bool:
    return _MONTH.fullmatch(text) is not None


async def agent_report_html(services: Services, agent: str, reader: Reader) -> Markup:
    """The agent's offboarding evidence pack (id or userName, deleted agents too) as an HTML fragment; its reading
    by ``reader`` is recorded first (``gateway/reports/reading.py``)."""
    await record_report_view(services.audit, reader, "agent", agent)
    report = await build_agent_report(services, agent)
    # The report's renderer autoescapes every value (gateway/reports/render.py); the fragment is trusted markup.
    return Markup(render_agent_html(report, standalone=False))  # noqa: S704


async def monthly_report_html(services: Services, month: str, reader: Reader) -> Markup:
    """The PIPA monthly review of ``YYYY-MM`` as an HTML fragment; its reading by ``reader`` is recorded first."""
    await record_report_view(services.audit, reader, "monthly", month)
    report = await build_monthly_report(services, month)
    return Markup(render_monthly_html(report, standalone=False))  # noqa: S704


async def chain_status(services: Services) -> dict[str, object]:
    """The tamper-evident chain's status: head, records waiting for the sealer, the last checkpoint, the anchor."""
    return await audit_status.chain_status(services)
