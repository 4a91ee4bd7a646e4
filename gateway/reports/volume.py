"""Unusual volume (pure): agents whose daily count is far above their peers' that day.

The rule, stated in the report as it is applied: on each local day, for requests and for downloads separately, an
agent's count is unusual when it is greater than max(``factor`` × the median of that day's counts over every agent
with at least one request that day, ``floor``). The median resists the outlier itself (a mean would be dragged
up by it); the floor keeps a quiet day (median 2) from flagging an agent with 7.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True, slots=True)
class AgentDay:
    """One agent's requests on one local day, all channels and hours together."""

    agent_id: str | None
    agent_name: str | None
    day: str
    requests: int
    downloads: int
    denied: int


@dataclass(frozen=True, slots=True)
class VolumeRule:
    factor: float
    floor_requests: int
    floor_downloads: int

    def describe(self) -> str:
        return (
            f"an agent's daily count is unusual when greater than max({self.factor:g} × the median over all agents "
            f"active that day, {self.floor_requests} requests / {self.floor_downloads} downloads)"
        )


@dataclass(frozen=True, slots=True)
class Outlier:
    agent_id: str | None
    agent_name: str | None
    day: str
    #: "requests" or "downloads"
    metric: str
    count: int
    median: float
    threshold: float

    def as_dict(self) -> dict[str, object]:
        return {
            "agent_id": self.agent_id,
            "agent_name": self.agent_name,
            "day": self.day,
            "metric": self.metric,
            "count": self.count,
            "median": self.median,
            "threshold": self.threshold,
        }


def outliers(days: Iterable[AgentDay], rule: VolumeRule) -> list[Outlier]:
    """Every (agent, day, metric) above the rule's threshold, by day then count (highest first)."""
    by_day: dict[str, list[AgentDay]] = {}
    for row in days:
        by_day.setdefault(row.day, []).append(row)
    found: list[Outlier] = []
    for day in sorted(by_day):
        rows = by_day[day]
        for metric, floor in (("requests", rule.floor_requests), ("downloads", rule.floor_downloads)):
            counts = [getattr(r, metric) for r in rows]
            middle = float(median(counts))
            threshold = max(rule.factor * middle, float(floor))
            flagged = [r for r in rows if getattr(r, metric) > threshold]
            for r in sorted(flagged, key=lambda r: -int(getattr(r, metric))):
                found.append(Outlier(r.agent_id, r.agent_name, day, metric, getattr(r, metric), middle, threshold))
    return found
