"""A serving process runs its full garbage collections at a steady pace, not after a burst of allocations, and
never while access is being ended here (gateway/collector.py)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from gateway import collector
from gateway.collector import FullCollections


async def test_full_collections_run_every_interval_and_never_by_themselves_meanwhile() -> None:
    before = gc.get_threshold()
    pacer = FullCollections(0.05)
    task = asyncio.create_task(pacer.run_forever())
    try:
        await asyncio.sleep(0.01)
        assert gc.get_threshold()[2] > 10**9  # generation 2 is no longer started by allocations
        assert gc.get_threshold()[:2] == before[:2]  # the young generations are as they were
        deadline = time.monotonic() + 5
        while pacer.runs < 3:
            assert time.monotonic() < deadline, "the paced collections did not run"
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gc.get_threshold() == before  # restored when the gateway stops


async def test_a_full_collection_waits_while_access_is_being_ended_but_not_longer_than_an_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(collector, "QUIET_SECONDS", 0.8)
    pacer = FullCollections(0.5)
    task = asyncio.create_task(pacer.run_forever())
    try:
        pacer.ending_access()  # a deprovisioning starts: quiet until 0.8 s; the pass was due at 0.5 s
        await asyncio.sleep(0.65)
        assert pacer.runs == 0
        await asyncio.sleep(0.65)
        assert pacer.runs >= 1 and pacer.deferred == 1
        # A storm that never pauses holds the pass back by one interval at most, not for ever.
        started, runs = time.monotonic(), pacer.runs
        while pacer.runs == runs:
            pacer.ending_access()
            assert time.monotonic() - started < 3.0, "a steady stream of revocations starved the collector"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
