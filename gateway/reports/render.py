"""The reports as HTML: server-rendered Jinja2, autoescaped, no script, print CSS (``gateway/templates/reports``).

``standalone=True`` gives a whole document (the CLI's ``--format html``, "Print → PDF"); ``standalone=False`` the
``<article>`` alone, for the web console's layout, which serves :func:`report_css` as its stylesheet. Templates
receive the reports' ``as_dict()``: the HTML shows exactly what the JSON says.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from gateway.reports import charts
from gateway.reports.agent import AgentReport
from gateway.reports.monthly import MonthlyReport

_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
#: Bars in the downloads-per-agent chart (the table below it lists every agent).
AGENTS_CHARTED = 30


def _moment(value: str | None) -> str:
    """An ISO time as the tables show it, to the second (the JSON keeps the microseconds)."""
    return "" if not value else datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


@cache
def _env() -> Environment:
    # Autoescape everything, whatever the extension: a userName like ``<script>`` must print as text.
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
    )
    env.filters["moment"] = _moment
    return env


def report_css() -> str:
    """The reports' stylesheet (screen and print), for a page that embeds the fragments."""
    return (_TEMPLATES / "reports" / "report.css").read_text(encoding="utf-8")


def _page(title: str, body: str, standalone: bool) -> str:
    if not standalone:
        return body
    return _env().get_template("reports/_layout.html").render(title=title, body=Markup(body))  # noqa: S704


def render_agent_html(report: AgentReport, *, standalone: bool = True) -> str:
    body = _env().get_template("reports/agent.html").render(r=report.as_dict())
    return _page(f"Offboarding evidence: {report.agent.user_name}", body, standalone)


def render_monthly_html(report: MonthlyReport, *, standalone: bool = True) -> str:
    data = report.as_dict()
    zone = ZoneInfo(report.month.zone)

    def local(value: str) -> str:
        """A UTC ISO time as the review's local time, ``YYYY-MM-DD HH:MM:SS``."""
        return datetime.fromisoformat(value).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")

    groups: dict[str, list[dict[str, Any]]] = {}
    for record in cast(list[dict[str, Any]], data["outbound"]):
        groups.setdefault(record["agent_name"] or record["agent_id"] or "(unknown agent)", []).append(record)
    loaders = [(a.agent_name or a.agent_id or "(no agent)", a.downloads) for a in report.per_agent if a.downloads]
    figures = {
        "per_day": charts.columns("Requests per day", [(day, n) for day, n, _ in report.per_day]),
        "downloads_per_agent": charts.rows(
            "Downloads and exports per agent"
            + (f" (the {AGENTS_CHARTED} with most)" if len(loaders) > AGENTS_CHARTED else ""),
            loaders[:AGENTS_CHARTED],
        ),
        "per_channel": charts.rows(
            "Requests per channel", [(c.channel or "(none)", c.requests) for c in report.per_channel]
        ),
    }
    body = (
        _env()
        .get_template("reports/monthly.html")
        .render(r=data, charts=figures, local=local, outbound_by_agent=list(groups.items()))
    )
    return _page(f"Access-record review {report.month.label}", body, standalone)
