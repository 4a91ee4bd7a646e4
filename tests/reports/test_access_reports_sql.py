"""The reports' aggregations in SQL, on SQLite and PostgreSQL: local days and business hours in the review's time
zone (including a month across a DST change), per-channel activity of one agent, and access by disabled agents."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.reports.period import parse_month
from gateway.services import Services
from gateway.storage import access_reports as q
from gateway.storage.database import read_transaction
from tests.reports.seed import add_agent, disable, kst, request

WEEKDAYS = [1, 2, 3, 4, 5]  # Monday to Friday (0 = Sunday)


def clock(services: Services, offset_minutes: int = 540) -> q.LocalClock:
    return q.LocalClock(services.database.engine.dialect.name, offset_minutes)


async def month_activity(services: Services, month: str, zone: str = "Asia/Seoul") -> list[q.Activity]:
    """The month's activity rows, one query per stretch of constant offset, business hours 08:00-19:00."""
    period = parse_month(month, zone)
    rows: list[q.Activity] = []
    async with read_transaction(services.database.engine) as conn:
        for stretch in period.stretches:
            at = clock(services, stretch.offset_minutes)
            rows += await q.activity(conn, stretch.start, stretch.end, at, (480, 1140), WEEKDAYS)
    return rows


async def test_requests_are_counted_per_agent_channel_and_local_day_in_the_review_time_zone(
    services: Services,
) -> None:
    alice, bob = await add_agent(services, "alice"), await add_agent(services, "bob")
    await services.access_log.append(
        [
            request(alice, kst(2, 9, 59)),  # Monday 09:59 in Seoul is Monday 00:59 UTC
            request(alice, kst(3, 9, 0), action="download", subject="c-1"),
            request(alice, kst(3, 10), decision="deny"),
            request(alice, kst(3, 11), channel="mail"),
            request(bob, kst(3, 11), action="export", subject="c-2"),
            request(bob, kst(3, 11), kind="login"),  # not a request: not counted
        ]
    )
    rows = await month_activity(services, "2026-11")
    found = sorted((r.agent_name, r.day, r.channel, r.requests, r.downloads, r.denied) for r in rows)
    assert found == [
        ("alice", "2026-11-02", "chat", 1, 0, 0),
        ("alice", "2026-11-03", "chat", 2, 1, 1),
        ("alice", "2026-11-03", "mail", 1, 0, 0),
        ("bob", "2026-11-03", "chat", 1, 1, 0),
    ]
    assert not any(r.after_hours for r in rows)


async def test_after_hours_are_requests_outside_local_business_hours_or_on_other_days(services: Services) -> None:
    alice = await add_agent(services, "alice")
    await services.access_log.append(
        [
            request(alice, kst(2, 7, 59)),  # before 08:00: after hours
            request(alice, kst(2, 8, 0)),  # business hours start at 08:00
            request(alice, kst(2, 18, 59)),  # still inside
            request(alice, kst(2, 19, 0), action="download"),  # business hours end at 19:00 (exclusive)
            request(alice, kst(2, 23, 59)),  # Monday 23:59 in Seoul (14:59 UTC): still Monday
            request(alice, kst(3, 0, 0)),  # Tuesday from its first minute
            request(alice, kst(7, 12, 0), channel="mail"),  # Saturday noon
        ]
    )
    rows = await month_activity(services, "2026-11")
    late = sorted((r.day, r.channel, r.requests, r.downloads, r.first, r.last) for r in rows if r.after_hours)
    inside = sorted((r.day, r.requests, r.first, r.last) for r in rows if not r.after_hours)
    assert late == [
        ("2026-11-02", "chat", 3, 1, kst(2, 7, 59), kst(2, 23, 59)),
        ("2026-11-03", "chat", 1, 0, kst(3, 0), kst(3, 0)),
        ("2026-11-07", "mail", 1, 0, kst(7, 12), kst(7, 12)),
    ]
    assert inside == [("2026-11-02", 2, kst(2, 8), kst(2, 18, 59))]


async def test_a_month_across_a_dst_change_counts_each_request_on_its_local_day(services: Services) -> None:
    alice = await add_agent(services, "alice")
    berlin = ZoneInfo("Europe/Berlin")
    # 29 March 2026 02:00 CET becomes 03:00 CEST. 22:30 UTC on the 29th is 00:30 on the 30th in Berlin (+2);
    # counted with the winter offset (+1) it would land on the 29th.
    late = datetime(2026, 3, 29, 22, 30, tzinfo=UTC)
    early = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 00:30 on 2 March (+1)
    await services.access_log.append([request(alice, late), request(alice, early)])
    assert [s.offset_minutes for s in parse_month("2026-03", "Europe/Berlin").stretches] == [60, 120]
    days = sorted(r.day for r in await month_activity(services, "2026-03", "Europe/Berlin"))
    assert days == [early.astimezone(berlin).date().isoformat(), late.astimezone(berlin).date().isoformat()]
    assert days == ["2026-03-02", "2026-03-30"]


async def test_an_agents_activity_counts_requests_downloads_denials_and_subjects_per_channel(
    services: Services,
) -> None:
    alice, bob = await add_agent(services, "alice"), await add_agent(services, "bob")
    await services.access_log.append(
        [
            request(alice, kst(2, 9), subject="c-1"),
            request(alice, kst(2, 10), subject="c-1", action="download"),
            request(alice, kst(2, 11), subject="c-2", decision="deny"),
            request(alice, kst(4, 9), channel="mail", subject="c-3", action="export"),
            request(bob, kst(2, 9), subject="c-9"),
        ]
    )
    async with read_transaction(services.database.engine) as conn:
        activity = await q.channel_activity(conn, alice.id)
        subjects = await q.subjects_touched(conn, alice.id, 10)
    assert activity == [
        q.ChannelActivity("chat", kst(2, 9), kst(2, 11), 3, 1, 1, 2),
        q.ChannelActivity("mail", kst(4, 9), kst(4, 9), 1, 1, 0, 1),
    ]
    assert subjects[0] == q.SubjectCount("chat", "c-1", 2, 1)
    assert sorted((s.channel, s.subject) for s in subjects) == [("chat", "c-1"), ("chat", "c-2"), ("mail", "c-3")]


async def test_disabled_access_lists_allowed_access_after_the_disable_of_agents_still_disabled(
    services: Services,
) -> None:
    alice, bob, carol = [await add_agent(services, n) for n in ("alice", "bob", "carol")]
    await disable(services, alice, kst(10, 12))
    await disable(services, bob, kst(10, 12))
    await services.agents.set_active(bob.id, True, None, kst(11, 9))  # re-enabled: bob is not disabled now
    await services.access_log.append(
        [
            request(alice, kst(10, 11)),  # before the disable
            request(alice, kst(10, 13), decision="deny"),  # refused: as it should be
            request(alice, kst(10, 14)),  # allowed after the disable: flagged
            request(alice, kst(10, 15), kind="login"),  # a login after the disable: flagged
            request(bob, kst(12, 9)),
            request(carol, kst(12, 9)),
        ]
    )
    month = parse_month("2026-11", "Asia/Seoul")
    async with read_transaction(services.database.engine) as conn:
        total, found = await q.disabled_access(conn, month.start, month.end, 10)
        total_after, after = await q.allowed_after(conn, alice.id, kst(10, 12), 1)
    assert total == 2
    assert [(d.record.agent_name, d.record.kind, d.record.time, d.disabled_at) for d in found] == [
        ("alice", "request", kst(10, 14), kst(10, 12)),
        ("alice", "login", kst(10, 15), kst(10, 12)),
    ]
    assert total_after == 2
    assert [r.time for r in after] == [kst(10, 14)]
