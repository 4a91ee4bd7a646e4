"""The PIPA monthly review (``channelgate report monthly YYYY-MM``, the console's monthly report).

PIPA's safety-measure standard art. 8 asks that the access records of personal-data handlers be reviewed at least
monthly, and that downloads of personal data be explained. The review lists, for the month in the configured
time zone: any access by a disabled agent (must be none; shown first), every download and export with an empty
reason column for the reviewer to fill and sign, after-hours access, unusual volume (``gateway.reports.volume``),
and the month's totals per day, agent and channel. Every count is grouped in SQL
(``gateway.storage.access_reports``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.audit.settings import ReviewSettings
from gateway.reports.agent import receipt_dict
from gateway.reports.period import Month, parse_month
from gateway.reports.volume import AgentDay, Outlier, VolumeRule, outliers
from gateway.reports.zero_access import split_at_disable
from gateway.services import Services
from gateway.storage import access_reports as q
from gateway.storage.access_log import AccessRecord
from gateway.storage.database import read_transaction
from gateway.timeutil import utcnow

#: Downloads and exports listed at most (the reviewer signs the list; the count is always complete).
OUTBOUND_SHOWN = 5000
DISABLED_SHOWN = 500
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


@dataclass(frozen=True, slots=True)
class AfterHours:
    agent_id: str | None
    agent_name: str | None
    day: str
    channel: str | None
    requests: int
    downloads: int
    first: datetime
    last: datetime


@dataclass(frozen=True, slots=True)
class ChannelTotals:
    channel: str | None
    requests: int
    downloads: int
    denied: int
    agents: int


@dataclass(frozen=True, slots=True)
class AgentTotals:
    agent_id: str | None
    agent_name: str | None
    requests: int
    downloads: int
    denied: int


@dataclass(frozen=True, slots=True)
class MonthlyReport:
    generated_at: datetime
    month: Month
    review: ReviewSettings
    rule: VolumeRule
    disabled_access: tuple[q.DisabledAccess, ...]
    disabled_access_total: int
    #: Requests let in before their agent's disable and still running at it (closed by the session kill).
    disabled_in_flight: tuple[q.DisabledAccess, ...]
    outbound: tuple[AccessRecord, ...]
    outbound_total: int
    after_hours: tuple[AfterHours, ...]
    outliers: tuple[Outlier, ...]
    #: Every local day of the month: (day, requests, downloads).
    per_day: tuple[tuple[str, int, int], ...]
    per_agent: tuple[AgentTotals, ...]
    per_channel: tuple[ChannelTotals, ...]

    def as_dict(self) -> dict[str, object]:
        review = self.review
        return {
            "report": "monthly",
            "month": self.month.label,
            "generated_at": self.generated_at.isoformat(),
            "period": {
                "timezone": self.month.zone,
                "start": self.month.start.isoformat(),
                "end": self.month.end.isoformat(),
            },
            "rules": {
                "business_hours": review.business_hours,
                "business_days": list(review.business_days),
                "unusual_volume": self.rule.describe(),
                "disabled_access": "allowed requests or logins of an agent that is disabled or deleted now, let in "
                "after the first disable record since it was last made active",
            },
            "disabled_access_total": self.disabled_access_total,
            "disabled_access": [_disabled_dict(d) for d in self.disabled_access],
            "disabled_in_flight": [_disabled_dict(d) for d in self.disabled_in_flight],
            "outbound_total": self.outbound_total,
            "outbound": [
                {
                    "seq": r.seq,
                    "time": r.time.isoformat(),
                    "agent_id": r.agent_id,
                    "agent_name": r.agent_name,
                    "channel": r.channel,
                    "subject": r.subject,
                    "action": r.action,
                    "path": r.path,
                    "source_ip": r.source_ip,
                    "reason": None,
                }
                for r in self.outbound
            ],
            "after_hours": [
                {
                    "agent_id": a.agent_id,
                    "agent_name": a.agent_name,
                    "day": a.day,
                    "channel": a.channel,
                    "requests": a.requests,
                    "downloads": a.downloads,
                    "first": a.first.isoformat(),
                    "last": a.last.isoformat(),
                }
                for a in self.after_hours
            ],
            "unusual_volume": [o.as_dict() for o in self.outliers],
            "per_day": [{"day": d, "requests": n, "downloads": out} for d, n, out in self.per_day],
            "per_agent": [
                {
                    "agent_id": a.agent_id,
                    "agent_name": a.agent_name,
                    "requests": a.requests,
                    "downloads": a.downloads,
                    "denied": a.denied,
                }
                for a in self.per_agent
            ],
            "per_channel": [
                {
                    "channel": c.channel,
                    "requests": c.requests,
                    "downloads": c.downloads,
                    "denied": c.denied,
                    "agents": c.agents,
                }
                for c in self.per_channel
            ],
        }


def _disabled_dict(found: q.DisabledAccess) -> dict[str, object]:
    return receipt_dict(found.record) | {
        "agent_name": found.record.agent_name,
        "disabled_at": found.disabled_at.isoformat(),
    }


def _days(rows: Iterable[q.Activity]) -> list[AgentDay]:
    """Per agent and local day, whatever the channel or hour (two stretches of offset, a DST change, add up)."""
    merged: dict[tuple[str | None, str], list[int]] = {}
    names: dict[str | None, str | None] = {}
    for row in rows:
        counts = merged.setdefault((row.agent_id, row.day), [0, 0, 0])
        counts[0] += row.requests
        counts[1] += row.downloads
        counts[2] += row.denied
        names[row.agent_id] = names.get(row.agent_id) or row.agent_name
    return [AgentDay(agent, names[agent], day, n, out, denied) for (agent, day), (n, out, denied) in merged.items()]


def _after_hours(rows: Iterable[q.Activity]) -> list[AfterHours]:
    merged: dict[tuple[str | None, str, str | None], AfterHours] = {}
    for row in rows:
        if not row.after_hours:
            continue
        key = (row.agent_id, row.day, row.channel)
        seen = merged.get(key)
        merged[key] = AfterHours(
            row.agent_id,
            (seen.agent_name if seen else None) or row.agent_name,
            row.day,
            row.channel,
            (seen.requests if seen else 0) + row.requests,
            (seen.downloads if seen else 0) + row.downloads,
            min(seen.first, row.first) if seen else row.first,
            max(seen.last, row.last) if seen else row.last,
        )
    return sorted(merged.values(), key=lambda a: (a.agent_name or "", a.agent_id or "", a.day, a.channel or ""))


def _channels(rows: Iterable[q.Activity]) -> list[ChannelTotals]:
    counts: dict[str | None, list[int]] = {}
    people: dict[str | None, set[str | None]] = {}
    for row in rows:
        total = counts.setdefault(row.channel, [0, 0, 0])
        total[0] += row.requests
        total[1] += row.downloads
        total[2] += row.denied
        people.setdefault(row.channel, set()).add(row.agent_id)
    ordered = sorted(counts, key=lambda c: (c is None, c or ""))
    return [ChannelTotals(c, counts[c][0], counts[c][1], counts[c][2], len(people[c])) for c in ordered]


def _totals(days: list[AgentDay], month: Month) -> tuple[list[tuple[str, int, int]], list[AgentTotals]]:
    """Requests and downloads per local day (every day of the month, zeros too) and per agent (most downloads first)."""
    per_day = {day: [0, 0] for day in month.days}
    agents: dict[str | None, AgentTotals] = {}
    for row in days:
        counts = per_day.setdefault(row.day, [0, 0])
        counts[0] += row.requests
        counts[1] += row.downloads
        seen = agents.get(row.agent_id)
        agents[row.agent_id] = AgentTotals(
            row.agent_id,
            (seen.agent_name if seen else None) or row.agent_name,
            (seen.requests if seen else 0) + row.requests,
            (seen.downloads if seen else 0) + row.downloads,
            (seen.denied if seen else 0) + row.denied,
        )
    ordered = sorted(agents.values(), key=lambda a: (-a.downloads, -a.requests, a.agent_name or ""))
    return [(d, n, out) for d, (n, out) in sorted(per_day.items())], ordered


async def build_monthly_report(services: Services, month: str) -> MonthlyReport:
    """The review of ``month`` (``YYYY-MM`` in ``[audit.review] timezone``); ``InvalidMonth`` (400) otherwise."""
    review = services.settings.audit.review
    period = parse_month(month, review.timezone)
    rule = VolumeRule(review.volume_factor, review.volume_floor_requests, review.volume_floor_downloads)
    weekdays = sorted(_WEEKDAYS[d] for d in set(review.business_days))
    engine = services.database.engine
    rows: list[q.Activity] = []
    async with read_transaction(engine) as conn:
        disabled_total, disabled = await q.disabled_access(conn, period.start, period.end, DISABLED_SHOWN)
        for stretch in period.stretches:
            clock = q.LocalClock(engine.dialect.name, stretch.offset_minutes)
            rows += await q.activity(conn, stretch.start, stretch.end, clock, review.business_minutes, weekdays)
        outbound = await q.outbound_records(conn, period.start, period.end, OUTBOUND_SHOWN)
    # Fail closed: records not listed (more than DISABLED_SHOWN) count as let in after the disable.
    in_flight = [d for d in disabled if split_at_disable(d.disabled_at, d.killed_at, [d.record])[1]]
    days = _days(rows)
    per_day, per_agent = _totals(days, period)
    return MonthlyReport(
        generated_at=utcnow(),
        month=period,
        review=review,
        rule=rule,
        disabled_access=tuple(d for d in disabled if d not in in_flight),
        disabled_access_total=disabled_total - len(in_flight),
        disabled_in_flight=tuple(in_flight),
        outbound=tuple(outbound),
        outbound_total=sum(a.downloads for a in per_agent),
        after_hours=tuple(_after_hours(rows)),
        outliers=tuple(outliers(days, rule)),
        per_day=tuple(per_day),
        per_agent=tuple(per_agent),
        per_channel=tuple(_channels(rows)),
    )
