"""The evidence the console shows but does not compute: reports (``gateway/reports``) and the chain's status
(``gateway/audit/status.py``). Each page says plainly when its source is not available in this build."""

from __future__ import annotations

import importlib
import re
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from markupsafe import Markup

from gateway.services import Services
from gateway.storage.agents import Agent

_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            return None
        raise


def reports_available() -> bool:
    return _module("gateway.reports") is not None


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def previous_month() -> str:
    now = datetime.now(UTC)
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return f"{year:04d}-{month:02d}"


def valid_month(text: str) -> bool:
    return _MONTH.fullmatch(text) is not None


async def agent_report_html(services: Services, agent: Agent) -> Markup | None:
    """The agent's offboarding evidence pack as an HTML fragment (escaped by the report's renderer), or None."""
    reports = _module("gateway.reports")
    if reports is None:
        return None
    report = await reports.build_agent_report(services, agent.id)
    return Markup(reports.render_agent_html(report, standalone=False))  # noqa: S704 - the renderer escapes


async def monthly_report_html(services: Services, month: str) -> Markup | None:
    """The PIPA monthly review as an HTML fragment, or None when reports are not in this build."""
    reports = _module("gateway.reports")
    if reports is None:
        return None
    report = await reports.build_monthly_report(services, month)
    return Markup(reports.render_monthly_html(report, standalone=False))  # noqa: S704 - the renderer escapes


async def chain_status(services: Services) -> dict[str, Any] | None:
    """The tamper-evident chain's status (head, unsealed records, last checkpoint), or None when not built."""
    status = _module("gateway.audit.status")
    if status is None:
        return None
    result: dict[str, Any] = await status.chain_status(services)
    return result
