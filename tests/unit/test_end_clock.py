"""When a saved session end says the sessions ended (gateway/deprovision/endings.py ``EndClock``): outside the
replicas' clock vote the shift is read once, shared by the kills that start meanwhile, and read again after a failed
read; a serving replica uses its own clock while the vote agrees with it and reads the shift at each kill while
outvoted."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.deprovision.endings import EndClock
from gateway.timeutil import utcnow


class Reads:
    """A shift reader that answers the given shifts in turn (None: Redis did not answer) and counts its calls."""

    def __init__(self, *shifts: float | None) -> None:
        self._shifts = list(shifts)
        self.calls = 0

    async def __call__(self) -> float | None:
        self.calls += 1
        await asyncio.sleep(0.01)
        return self._shifts.pop(0)


async def test_outside_the_vote_the_shift_is_read_once_for_the_kills_that_start_together() -> None:
    reads = Reads(60.0)
    clock = EndClock(reads)
    await asyncio.gather(clock.ready(), clock.ready(), clock.ready())
    await clock.ready()
    assert reads.calls == 1 and clock.shift_seconds == 60.0
    assert clock() - utcnow() == pytest.approx(timedelta(seconds=60), abs=timedelta(seconds=1))


async def test_a_failed_read_leaves_the_hosts_clock_and_is_tried_again_at_the_next_kill() -> None:
    reads = Reads(None, 30.0)
    clock = EndClock(reads)
    await clock.ready()
    assert clock.shift_seconds == 0.0
    await clock.ready()
    assert reads.calls == 2 and clock.shift_seconds == 30.0


async def test_a_read_that_raises_never_stops_the_kill() -> None:
    async def broken() -> float | None:
        raise RuntimeError("a bug in the reader")

    clock = EndClock(broken)
    await clock.ready()
    assert clock.shift_seconds == 0.0


async def test_a_serving_replica_uses_its_own_clock_while_the_vote_agrees_and_reads_the_shift_while_outvoted() -> None:
    reads = Reads(45.0, 50.0)
    clock = EndClock(reads)
    agrees = True
    clock.trusted = lambda: agrees
    await clock.ready()
    assert reads.calls == 0 and clock.shift_seconds == 0.0
    agrees = False
    await clock.ready()
    await clock.ready()
    assert reads.calls == 2 and clock.shift_seconds == 50.0  # at each kill while outvoted
    agrees = True
    await clock.ready()
    assert clock.shift_seconds == 0.0
