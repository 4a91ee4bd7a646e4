"""This replica's clock against Redis's (gateway/sessions/redis_clock.py)."""

from __future__ import annotations

import logging

import pytest

from gateway.sessions.redis_clock import ClockReading, ClockSkew


@pytest.mark.parametrize(
    ("sent_at", "redis_now", "received_at", "skew"),
    [
        (100.0, 100.002, 100.004, 0.0),  # inside the round trip: the clocks agree
        (100.0, 100.0, 100.5, 0.0),  # a slow round trip hides nothing it could not contain
        (100.0, 130.0, 100.004, 29.996),  # Redis ahead: this replica is behind
        (100.0, 70.0, 100.004, -30.0),  # Redis behind: this replica is ahead
    ],
)
def test_the_skew_is_how_far_redis_reading_lies_outside_the_round_trip(
    sent_at: float, redis_now: float, received_at: float, skew: float
) -> None:
    assert ClockReading(sent_at, redis_now, received_at).skew == pytest.approx(skew)


def test_a_clock_off_by_more_than_allowed_is_broken_and_says_which_way_and_what_to_do() -> None:
    clock = ClockSkew(max_skew_seconds=5.0)
    clock.observe(ClockReading(100.0, 160.0, 100.01))
    assert clock.broken
    assert "60.0 s behind Redis's" in clock.problem() and "NTP" in clock.problem()
    clock.observe(ClockReading(100.0, 40.0, 100.01))
    assert clock.broken and "60.0 s ahead of Redis's" in clock.problem()


def test_a_clock_within_the_allowance_is_not_broken_and_one_fixed_is_served_again() -> None:
    clock = ClockSkew(max_skew_seconds=5.0)
    clock.observe(ClockReading(100.0, 104.9, 100.0))
    assert not clock.broken
    clock.observe(ClockReading(100.0, 110.0, 100.0))
    assert clock.broken
    clock.observe(ClockReading(200.0, 200.0, 200.001))
    assert not clock.broken and clock.skew == 0.0


def test_the_problem_is_logged_once_per_change_not_at_every_heartbeat(caplog: pytest.LogCaptureFixture) -> None:
    clock = ClockSkew(max_skew_seconds=1.0)
    with caplog.at_level(logging.WARNING, logger="channelgate.sessions"):
        for _ in range(3):
            clock.observe(ClockReading(100.0, 110.0, 100.0))
        clock.observe(ClockReading(100.0, 100.0, 100.0))
        clock.observe(ClockReading(100.0, 100.0, 100.0))
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
