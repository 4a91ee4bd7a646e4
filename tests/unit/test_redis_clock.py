"""This replica's clock against the other replicas' and Redis's (gateway/sessions/redis_clock.py)."""

from __future__ import annotations

import logging

import pytest

from gateway.deprovision.revived import clock_margin_seconds
from gateway.sessions.redis_clock import ClockReading, ClockSkew, shift_onto_replicas


def test_the_offset_is_from_the_round_trips_midpoint_and_its_slack_is_half_the_round_trip() -> None:
    assert ClockReading(100.0, 130.0, 100.004).offset == pytest.approx(29.998)  # Redis ahead: this replica behind
    assert ClockReading(100.0, 70.0, 100.004).offset == pytest.approx(-30.002)
    assert ClockReading(100.0, 100.0, 100.5).slack == pytest.approx(0.25)


def _vote(offset: float, peers: list[float], *, round_trip: float = 0.002, allowed: float = 5.0) -> ClockSkew:
    clock = ClockSkew(allowed)
    sent = 1_000.0
    clock.observe(ClockReading(sent, sent + round_trip / 2 + offset, sent + round_trip), peers)
    return clock


@pytest.mark.parametrize(
    ("offset", "peers", "broken"),
    [
        (0.0, [0.1, -0.2], False),  # everyone agrees
        (60.0, [0.0, 0.1], True),  # a minute behind the two others
        (-60.0, [0.0], True),  # two replicas that disagree: Redis's clock breaks the tie, against this one
        (0.0, [60.0], False),  # ... and for this one
        (30.0, [30.1, 29.9], False),  # Redis's clock drifted: the replicas agree, none is refused
        (30.0, [30.0], False),  # the same with two replicas
        (60.0, [], False),  # alone: every timeout is decided with this one clock, consistently
        (0.0, [100.0, 100.0], True),  # two of three agree: the third is refused, though Redis agrees with it
        (100.0, [0.0, 100.0], False),  # ... and those two keep serving
        (0.0, [100.0, -100.0], False),  # three that all disagree: the one Redis agrees with serves
        (100.0, [0.0, -100.0], True),
        (30.0, [30.0, 90.0], False),  # Redis drifted and one replica is off: the two that agree serve
        (90.0, [30.0, 30.0], True),
        (0.0, [0.0, 100.0, 100.0], False),  # two against two: Redis breaks the tie
        (100.0, [100.0, 0.0, 0.0], True),
    ],
    ids=[
        "agreed", "behind-two", "two-disagree-this-one-off", "two-disagree-other-one-off", "redis-drifted",
        "redis-drifted-two", "alone", "outvoted-by-two", "the-two", "all-differ-redis-side", "all-differ-other",
        "redis-drifted-one-off-the-pair", "redis-drifted-one-off-the-odd-one", "two-two-redis-side",
        "two-two-other-side",
    ],
)  # fmt: skip
def test_a_replica_is_refused_when_most_replicas_clocks_disagree_with_it_and_redis_breaks_ties(
    offset: float, peers: list[float], broken: bool
) -> None:
    assert _vote(offset, peers).broken is broken


def test_a_slow_round_trip_never_makes_a_right_clock_wrong() -> None:
    # Redis read its clock at the very start of a 4 s round trip: 2 s from the midpoint, inside the slack.
    clock = ClockSkew(1.0)
    clock.observe(ClockReading(1_000.0, 1_000.0, 1_004.0), [0.0])
    assert not clock.broken


def test_the_problem_says_which_way_how_far_how_many_clocks_disagree_and_what_to_do() -> None:
    assert "60.0 s behind Redis's and disagrees with 1 of the 2 live replicas' clocks" in _vote(60.0, [0.0]).problem()
    ahead = _vote(-60.0, [0.0, 0.0]).problem()
    assert "60.0 s ahead of Redis's and disagrees with 2 of the 3 live replicas' clocks" in ahead
    assert "max_clock_skew_seconds" in ahead and "NTP" in ahead


def test_the_problem_is_logged_once_per_change_not_at_every_heartbeat(caplog: pytest.LogCaptureFixture) -> None:
    clock = ClockSkew(1.0)
    with caplog.at_level(logging.WARNING, logger="channelgate.sessions"):
        for _ in range(3):
            clock.observe(ClockReading(100.0, 110.0, 100.0), [0.0])
        clock.observe(ClockReading(100.0, 100.0, 100.0), [0.0])
        clock.observe(ClockReading(100.0, 100.0, 100.0), [0.0])
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]


def test_two_serving_replicas_differ_by_at_most_twice_the_allowance_which_the_sweeps_clock_margin_covers() -> None:
    # [-30, +30, 0] with 30 s allowed: each agrees with a majority, all three serve, the outer two 60 s apart.
    assert [_vote(o, [p for p in (-30.0, 30.0, 0.0) if p != o], allowed=30.0).broken for o in (-30.0, 30.0, 0.0)] == [
        False,
        False,
        False,
    ]
    assert clock_margin_seconds(30.0) >= 60.0
    assert clock_margin_seconds(5.0) == 15.0  # the default


def test_a_process_outside_the_vote_reads_no_earlier_than_the_latest_serving_replica() -> None:
    behind_redis = ClockReading(sent_at=100.0, redis_now=130.0, received_at=100.0)  # 30 s behind Redis
    # Two serving replicas 10 and 12 s ahead of Redis; one 500 s behind it, outvoted: its clock does not count.
    assert shift_onto_replicas(behind_redis, [-10.0, -12.0, 500.0], 5.0) == pytest.approx(42.0)
    # No majority, Redis breaks the tie: the replica 40 s behind Redis is refused, the one on Redis's clock serves.
    assert shift_onto_replicas(behind_redis, [0.0, 40.0], 5.0) == pytest.approx(30.0)


def test_with_no_serving_replica_a_process_outside_the_vote_reads_the_later_of_its_clock_and_redis() -> None:
    assert shift_onto_replicas(ClockReading(100.0, 130.0, 100.0), [], 5.0) == pytest.approx(30.0)
    assert shift_onto_replicas(ClockReading(100.0, 70.0, 100.0), [], 5.0) == 0.0  # Redis behind: this host's
    assert shift_onto_replicas(ClockReading(100.0, 130.0, 100.0), [20.0, -20.0], 5.0) == pytest.approx(30.0)
