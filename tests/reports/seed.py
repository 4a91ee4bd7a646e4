"""Seeding agents and access records for the reports' tests, through the repositories the gateway uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.services import Services
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent

SEOUL = ZoneInfo("Asia/Seoul")


def kst(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment of November 2026 given in Seoul time (UTC+9, no DST), as UTC. 2026-11-02 is a Monday."""
    return datetime(2026, 11, day, hour, minute, tzinfo=SEOUL).astimezone(UTC)


async def add_agent(services: Services, user_name: str) -> Agent:
    return await services.agents.link_or_create_from_login(
        "https://idp.example", f"sub-{user_name}", user_name, None, None, datetime(2026, 10, 1, tzinfo=UTC),
        link_by="user_name_is_preferred_username", email_verified=False,
    )  # fmt: skip


def request(
    agent: Agent,
    time: datetime,
    *,
    channel: str = "chat",
    subject: str | None = None,
    action: str = "view",
    decision: str = "allow",
    kind: str = "request",
) -> AccessRecord:
    return AccessRecord(
        time=time,
        kind=kind,
        agent_id=agent.id,
        agent_name=agent.user_name,
        channel=channel,
        method="GET",
        path=f"/{channel}/customers",
        status=200 if decision == "allow" else 403,
        decision=decision,
        subject=subject,
        action=action,
        source_ip="10.0.0.7",
    )


async def disable(services: Services, agent: Agent, time: datetime) -> None:
    """What step 1 of deprovisioning leaves: the agent inactive, its disable record, and the record of the session
    kill that follows (50 ms later)."""
    await services.agents.set_active(agent.id, False, "left the company", time)
    await services.access_log.append(
        [
            AccessRecord(
                time=time,
                kind="deprovision",
                agent_id=agent.id,
                agent_name=agent.user_name,
                actor="admin",
                reason="left the company",
                decision="disabled",
                detail={"source": "cli", "step": "disable"},
            ),
            AccessRecord(
                time=time + timedelta(milliseconds=50),
                kind="sessions_revoked",
                agent_id=agent.id,
                agent_name=agent.user_name,
                actor="admin",
                decision="revoked",
                detail={"source": "cli", "sessions": 1},
            ),
        ]
    )
