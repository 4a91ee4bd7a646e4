"""The PIPA monthly review built from seeded records (SQLite and PostgreSQL): downloads to explain grouped by agent,
after-hours access, an unusual-volume outlier by the stated rule, access by a disabled agent at the top; the HTML
escapes a hostile userName and draws its charts as inline SVG; a month not written YYYY-MM is a 400."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from gateway.errors import BadRequest
from gateway.reports.monthly import build_monthly_report
from gateway.reports.period import InvalidMonth
from gateway.reports.render import render_monthly_html
from gateway.services import Services
from tests.reports.seed import add_agent, disable, kst, request

HOSTILE = '<script>alert("x")</script>\'"&'


async def seed_month(services: Services) -> None:
    """Five agents' ordinary Monday (3 requests each), one outlier (40 requests and 6 downloads), one disabled agent
    that was still let in, a download at night, and records outside the month (not counted)."""
    quiet = [await add_agent(services, name) for name in ("ann", "ben", "cho", "dan", HOSTILE)]
    heavy = await add_agent(services, "eve")
    gone = await add_agent(services, "gil")
    records = []
    for agent in quiet:
        records += [request(agent, kst(2, 10) + timedelta(minutes=n), subject=f"c-{n}") for n in range(3)]
    records += [request(heavy, kst(2, 9) + timedelta(minutes=n), subject=f"c-{n}") for n in range(40)]
    records += [request(heavy, kst(2, 14, n), action="download", subject=f"d-{n}") for n in range(6)]
    records.append(request(quiet[4], kst(3, 23, 30), channel="mail", action="export", subject="c-77"))  # at night
    records.append(request(quiet[0], kst(1, 0, 0) - timedelta(seconds=1), action="download"))  # 31 Oct: not counted
    await services.access_log.append(records)
    await disable(services, gone, kst(5, 12))
    # His console WebSocket, opened at 11:00 and closed by the session kill just after the disable: not counted.
    websocket = replace(request(gone, kst(5, 12) + timedelta(milliseconds=150)), duration_ms=3_600_150)
    await services.access_log.append([websocket, request(gone, kst(5, 13), channel="phone")])


async def test_monthly_review_lists_downloads_after_hours_outliers_and_disabled_access(services: Services) -> None:
    await seed_month(services)
    data: dict[str, Any] = (await build_monthly_report(services, "2026-11")).as_dict()  # the JSON document

    assert data["month"] == "2026-11"
    assert data["period"] == {
        "timezone": "Asia/Seoul",
        "start": "2026-10-31T15:00:00+00:00",
        "end": "2026-11-30T15:00:00+00:00",
    }
    # Access by a disabled agent: gil's request an hour after his disable.
    assert data["disabled_access_total"] == 1
    [flagged] = data["disabled_access"]
    assert (flagged["agent_name"], flagged["channel"], flagged["time"]) == ("gil", "phone", kst(5, 13).isoformat())
    assert flagged["disabled_at"] == kst(5, 12).isoformat()
    [in_flight] = data["disabled_in_flight"]
    assert (in_flight["agent_name"], in_flight["admitted_at"]) == ("gil", kst(5, 11).isoformat())
    # Every download and export of the month, with an empty reason for the reviewer; the one of 31 Oct is not.
    assert data["outbound_total"] == 7
    outbound = data["outbound"]
    assert isinstance(outbound, list)
    assert sorted({(r["agent_name"], r["action"]) for r in outbound}) == [(HOSTILE, "export"), ("eve", "download")]
    assert all(r["reason"] is None and r["subject"] for r in outbound)
    # After hours: the export at 23:30 only (business hours 08:00-19:00, Monday to Friday).
    assert [(a["agent_name"], a["day"], a["channel"], a["requests"]) for a in data["after_hours"]] == [
        (HOSTILE, "2026-11-03", "mail", 1)
    ]
    # Volume: on Monday the median is 3 requests; eve's 46 is above max(3 x 3, 10); her 6 downloads above
    # max(3 x 0, 3). Nobody else is flagged.
    volume = [(o["agent_name"], o["day"], o["metric"], o["count"], o["threshold"]) for o in data["unusual_volume"]]
    assert volume == [("eve", "2026-11-02", "requests", 46, 10.0), ("eve", "2026-11-02", "downloads", 6, 3.0)]
    assert "3 × the median" in str(data["rules"])
    # Totals: 30 days, Monday's 61 requests; per channel.
    per_day = {d["day"]: d["requests"] for d in data["per_day"]}
    assert len(per_day) == 30
    assert per_day["2026-11-02"] == 5 * 3 + 46
    assert {c["channel"]: c["requests"] for c in data["per_channel"]} == {"chat": 62, "mail": 1, "phone": 1}


async def test_monthly_html_escapes_a_hostile_user_name_and_draws_inline_svg_charts(services: Services) -> None:
    await seed_month(services)
    report = await build_monthly_report(services, "2026-11")

    html = render_monthly_html(report)
    fragment = render_monthly_html(report, standalone=False)

    assert HOSTILE not in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;&#34;&amp;" in html
    assert html.count("<svg") == 3 and fragment.count("<svg") == 3
    assert re.search(r"<rect [^>]*height=\"\d", html)
    # Strict-CSP friendly: no script, no external reference, no inline style attribute.
    assert not re.search(r"\sstyle=|\ssrc=|<link|https?://(?!www\.w3\.org/2000/svg)", html)
    assert "@media print" in html and "@media print" not in fragment
    assert fragment.lstrip().startswith("<article")
    # The disabled agent's access is the first finding, in the alarm box.
    assert html.index('class="alarm"') < html.index("Downloads and exports to explain")
    assert "gil" in html[html.index('class="alarm"') : html.index("Overview")]


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "November", "2026-11-01", "' OR 1=1 --"])
async def test_a_month_not_written_yyyy_mm_is_refused_with_status_400(services: Services, month: str) -> None:
    with pytest.raises(InvalidMonth) as refused:
        await build_monthly_report(services, month)
    assert isinstance(refused.value, BadRequest)
    assert refused.value.status == 400
    assert "YYYY-MM" in refused.value.message
