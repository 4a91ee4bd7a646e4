"""The load test's checks (bench/load_checks.py): each request judged against its agent's deprovisioning."""

from __future__ import annotations

from bench.load_checks import Moments, check_requests, check_sockets
from bench.load_wrk import Tagged, read_tagged
from bench.load_ws import SocketRecord

#: agent "gone" was deprovisioned: the call started at 100.0, its sessions left Redis at 100.05, it returned at 100.1
REVOKED = {"gone": Moments(started=100.0, returned=100.1, killed=100.05)}
END = 200.0


def test_a_request_sent_after_the_call_returned_and_served_is_a_late_allow() -> None:
    late = Tagged("gone", "r0-0-7", 100.2)

    checks = check_requests([late], [late], REVOKED, END)

    assert checks.late_after_return == [late]
    assert checks.late_after_kill == [late]


def test_a_request_sent_between_the_kill_and_the_return_and_served_breaks_only_the_stricter_check() -> None:
    racing = Tagged("gone", "r0-0-8", 100.07)

    checks = check_requests([racing], [racing], REVOKED, END)

    assert checks.late_after_return == []
    assert checks.late_after_kill == [racing]


def test_refusals_after_the_call_started_are_expected_and_before_it_are_errors() -> None:
    early = Tagged("gone", "r0-0-1", 50.0)
    queued = Tagged("gone", "r0-0-2", 99.9)  # sent just before the call, answered after the kill
    after = Tagged("gone", "r0-0-3", 150.0)

    checks = check_requests([early, queued, after], [], REVOKED, END)

    assert checks.refused_early == [early]
    assert checks.expected_refusals == 2


def test_a_live_agents_unserved_request_is_an_error_unless_it_was_in_flight_at_the_end() -> None:
    refused = Tagged("alive", "r1-0-1", 120.0)
    in_flight = Tagged("alive", "r1-0-2", END - 0.5)
    served = Tagged("alive", "r1-0-3", 130.0)

    checks = check_requests([refused, in_flight, served], [served], REVOKED, END)

    assert checks.refused_live == [refused]
    assert checks.in_flight_at_end == 1
    assert (checks.sent, checks.served, checks.unaccounted) == (3, 1, 0)


def test_a_served_request_missing_from_every_send_log_is_counted() -> None:
    checks = check_requests([], [Tagged("alive", "ghost", 120.0)], REVOKED, END)

    assert checks.unaccounted == 1


def test_tagged_lines_are_read_from_the_logs_and_other_lines_skipped() -> None:
    lines = ["agent001 r0-0-1 1500000", "agent002 r0-0-2 -", "", "agent003 poll-agent003-1-2 2500000"]

    assert list(read_tagged(lines)) == [
        Tagged("agent001", "r0-0-1", 1.5),
        Tagged("agent003", "poll-agent003-1-2", 2.5),
    ]


def test_sockets_of_revoked_agents_must_close_with_1008_and_no_other_may_close() -> None:
    records = [
        SocketRecord("gone", 0, opened=1.0, closed=100.06, close_code=1008, sent=3, rtts=[0.001] * 3),
        SocketRecord("gone-too", 1, opened=1.0, closed=None, sent=2, rtts=[0.001] * 2),
        SocketRecord("alive", 0, opened=1.0, closed=150.0, close_code=1011, sent=4, rtts=[0.001] * 4),
        SocketRecord("quiet", 1, opened=1.0, sent=5, rtts=[0.001] * 2, wrong_agent=1),
    ]

    checks = check_sockets(records, ["gone", "gone-too"])

    assert checks.revoked_closed == 1
    assert checks.revoked_not_closed == ["gone-too (close code None)"]
    assert checks.live_closed == ["alive (close code 1011)"]
    assert checks.wrong_agent == 1
    assert checks.lost_echoes == 2  # five sent, two echoed, one may still be in flight
