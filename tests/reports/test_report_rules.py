"""The reports' pure rules: the month in its time zone, the hand-over receipt as read, the unusual-volume rule and
the zero-access verdict (each failing check makes it "not proven", and says why)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.reports.handover import read_hand_over
from gateway.reports.period import InvalidMonth, parse_month
from gateway.reports.volume import AgentDay, VolumeRule, outliers
from gateway.reports.zero_access import (
    NOT_PROVEN,
    SessionsSeen,
    after_disable_check,
    disabled_check,
    pipeline_check,
    sessions_check,
    split_at_disable,
    verdict,
)
from gateway.storage.access_log import AccessRecord
from gateway.storage.pipeline import RunRecord, StepRecord

T = datetime(2026, 11, 20, 9, tzinfo=UTC)


def run(state: RunState = RunState.DONE, run_id: str = "r1") -> RunRecord:
    return RunRecord(run_id, "a1", "alice", "cli", "admin", "left", None, state, T, T, None)


def step(channel: str, kind: StepKind, state: StepState = StepState.DONE, detail: str | None = None,
         reference: str | None = None, run_id: str = "r1") -> StepRecord:  # fmt: skip
    return StepRecord(1, run_id, channel, kind, state, 1, T, f"k:{channel}:{kind.value}", reference, detail, T)


def test_a_month_is_its_local_days_and_ends_at_the_next_local_midnight() -> None:
    month = parse_month("2026-12", "Asia/Seoul")
    assert (month.start, month.end) == (datetime(2026, 11, 30, 15, tzinfo=UTC), datetime(2026, 12, 31, 15, tzinfo=UTC))
    assert month.days[0] == "2026-12-01" and month.days[-1] == "2026-12-31" and len(month.days) == 31
    assert [s.offset_minutes for s in parse_month("2026-10", "Europe/Berlin").stretches] == [120, 60]


@pytest.mark.parametrize(("month", "zone"), [("0001-01", "Asia/Seoul"), ("9999-12", "Asia/Seoul"), ("9999-12", "UTC")])
def test_a_month_whose_bounds_fall_outside_the_calendar_is_a_bad_request_naming_the_month(
    month: str, zone: str
) -> None:
    with pytest.raises(InvalidMonth, match="'month'") as raised:
        parse_month(month, zone)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("detail", "reference", "moved", "of", "to", "ids", "more"),
    [
        ("3 open tickets handed to carol", "T-1, T-2, T-3", 3, None, "carol", ("T-1", "T-2", "T-3"), 0),
        ("1 open ticket moved to queue 'chat-unassigned' (no successor)", "T-1", 1, None, "queue:chat-unassigned",
         ("T-1",), 0),
        ("2 of 30 open tickets handed to carol (T-1, T-2); then the ticket API failed for now: 503", "T-1, T-2",
         2, 30, "carol", ("T-1", "T-2"), 0),
        ("25 open tickets handed to dave", "T-1, T-2 and 23 more", 25, None, "dave", ("T-1", "T-2"), 23),
        ("alice has no open tickets", None, 0, None, None, (), 0),
        ("listing open tickets: connection refused", None, None, None, None, (), 0),
    ],
)  # fmt: skip
def test_a_hand_over_receipt_is_read_for_how_many_tickets_moved_and_to_whom(
    detail: str, reference: str | None, moved: int | None, of: int | None, to: str | None,
    ids: tuple[str, ...], more: int,
) -> None:  # fmt: skip
    shown = read_hand_over(run(), step("chat", StepKind.HAND_OVER, detail=detail, reference=reference))
    assert (shown.moved, shown.of, shown.to, shown.ticket_ids, shown.more_ids) == (moved, of, to, ids, more)
    assert shown.detail == detail  # the receipt itself is always shown beside the reading


def test_unusual_volume_is_above_the_factor_times_the_days_median_and_the_floor() -> None:
    rule = VolumeRule(factor=3, floor_requests=10, floor_downloads=3)
    day = [AgentDay(n, n, "2026-11-02", r, d, 0) for n, r, d in
           [("a", 4, 0), ("b", 5, 1), ("c", 6, 0), ("d", 16, 4), ("e", 15, 3)]]  # fmt: skip
    quiet = [AgentDay("a", "a", "2026-11-03", 2, 0, 0), AgentDay("b", "b", "2026-11-03", 9, 0, 0)]
    found = [(o.agent_id, o.day, o.metric, o.count, o.threshold) for o in outliers(day + quiet, rule)]
    # Median 6 requests → threshold max(18, 10) = 18: nobody; median 1 download → max(3, 3) = 3: only d's 4.
    # On the quiet day the median is 5.5 → max(16.5, 10): b's 9 is not unusual.
    assert found == [("d", "2026-11-02", "downloads", 4, 3.0)]


def test_every_check_passing_is_access_ended_with_the_evidence() -> None:
    disable = AccessRecord(time=T, kind="deprovision", seq=7, actor="admin", reason="left", decision="disabled")
    chain = [step(c, k) for c in ("chat", "phone") for k in (StepKind.REVOKE, StepKind.VERIFY)]
    checks = [
        disabled_check(False, False, T, disable),
        sessions_check(SessionsSeen("redis")),
        pipeline_check([run()], chain),
        after_disable_check(T, 0, [], []),
    ]
    result = verdict(checks, T, [], 0)
    assert result.ended and result.statement == "access ended" and result.reasons == []
    assert "record seq 7" in checks[0].evidence[1]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("active", "agent disabled: the agent is active"),
        ("no disable record", "agent disabled: the agent is disabled, but the access log holds no disable record"),
        ("live session", "no live session: the redis session store holds 1 live session(s)"),
        ("store down", "no live session: the redis session store was not checked: Redis is unreachable"),
        ("no run", "every channel revoked and verified: no deprovisioning run is recorded"),
        ("run attention", "every channel revoked and verified: run r1 is attention, not done"),
        ("verify dead", "every channel revoked and verified: channel phone: verify is dead: seat still enabled"),
        ("no verify", "every channel revoked and verified: channel phone: no verify step"),
        ("remove failed", "every channel revoked and verified: channel phone: remove is failed after 1 attempt(s)"),
        ("access after", "no access allowed after the disable: 2 request(s) or login(s) allowed after"),
    ],
)
def test_any_failing_check_makes_the_verdict_not_proven_and_says_why(case: str, expected: str) -> None:
    disable = AccessRecord(time=T, kind="deprovision", seq=7, actor="admin", reason="left", decision="disabled")
    disabled_at: datetime | None
    record: AccessRecord | None
    active, disabled_at, record = case == "active", T, disable
    if case == "no disable record":
        disabled_at, record = None, None
    seen = {
        "live session": SessionsSeen("redis", 1),
        "store down": SessionsSeen("redis", unseen="Redis is unreachable"),
    }
    runs = [] if case == "no run" else [run(RunState.ATTENTION if case == "run attention" else RunState.DONE)]
    steps = [step("chat", StepKind.REVOKE), step("chat", StepKind.VERIFY), step("phone", StepKind.REVOKE)]
    if case == "verify dead":
        steps.append(step("phone", StepKind.VERIFY, StepState.DEAD, "seat still enabled"))
    elif case != "no verify":
        steps.append(step("phone", StepKind.VERIFY))
    if case == "remove failed":
        steps.append(step("phone", StepKind.REMOVE, StepState.FAILED, "403"))
    leaks = [AccessRecord(time=T, kind="request", seq=9, decision="allow", channel="chat", path="/x")]
    checks = [
        disabled_check(active, False, disabled_at, record),
        sessions_check(seen.get(case, SessionsSeen("redis"))),
        pipeline_check(runs, steps),
        after_disable_check(disabled_at if case != "no disable record" else T, 2 if case == "access after" else 0,
                            leaks if case == "access after" else [], []),
    ]  # fmt: skip
    result = verdict(checks, T, [], 0)
    assert result.statement == NOT_PROVEN and not result.ended
    assert any(reason.startswith(expected) for reason in result.reasons), result.reasons
    assert len([c for c in checks if not c.passed]) == 1


def test_a_superseded_run_counts_neither_as_done_nor_as_a_failure_and_is_listed() -> None:
    superseded = [
        step("chat", StepKind.REVOKE, run_id="r1"),
        step("chat", StepKind.VERIFY, StepState.SUPERSEDED, "superseded: the agent was made active again", run_id="r1"),
    ]
    done = [step("chat", kind, run_id="r2") for kind in (StepKind.REVOKE, StepKind.VERIFY)]
    runs = [run(RunState.SUPERSEDED, "r1"), replace(run(run_id="r2"), created_at=T + timedelta(hours=1))]
    check = pipeline_check(runs, superseded + done)
    assert check.passed, check.evidence
    assert check.evidence[:2] == (
        "1 run(s) done",
        "run r1 superseded (the agent was made active again before it finished): not counted",
    )
    alone = pipeline_check(runs[:1], superseded)
    assert not alone.passed
    assert alone.evidence[0] == "no deprovisioning run ended the agent's access: each was superseded"


def test_a_request_let_in_before_the_disable_and_ended_by_the_kill_is_listed_but_not_access_after_it() -> None:
    websocket = AccessRecord(  # opened 10 minutes before the disable, closed 200 ms after it by the kill
        time=T + timedelta(milliseconds=200), kind="request", seq=11, decision="allow", channel="chat",
        method="WEBSOCKET", path="/chat/ws", duration_ms=600_200,
    )  # fmt: skip
    later = AccessRecord(time=T + timedelta(seconds=5), kind="request", seq=12, decision="allow", duration_ms=30)

    killed = T + timedelta(milliseconds=120)  # the kill's record: written once every replica closed connections

    after, in_flight = split_at_disable(T, killed, [websocket])
    assert (after, in_flight) == ([], [websocket])
    passed = after_disable_check(T, 1, after, in_flight)
    assert passed.passed
    assert "let in at 2026-11-20T08:50:00" in passed.evidence[1] and "ended by the session kill" in passed.evidence[1]
    # Without a kill after the disable, or still open well after it, the same stream is access after the disable.
    assert split_at_disable(T, None, [websocket]) == ([websocket], [])
    assert split_at_disable(T, T - timedelta(days=1), [websocket]) == ([websocket], [])
    open_late = replace(websocket, time=killed + timedelta(seconds=10), duration_ms=610_120)
    assert split_at_disable(T, killed, [open_late]) == ([open_late], [])

    after, in_flight = split_at_disable(T, killed, [websocket, later])
    failed = after_disable_check(T, 2, after, in_flight)
    assert not failed.passed and failed.evidence[0].startswith("1 request(s) or login(s) allowed after")
    # Records the report did not read (more than it lists) count as let in after the disable: fail closed.
    assert not after_disable_check(T, 2, [], [websocket]).passed
