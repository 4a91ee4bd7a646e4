"""Full garbage collections at a steady pace, never in the middle of ending someone's access.

CPython runs a full (generation 2) pass of its cyclic garbage collector when enough objects survived the younger
passes — that is, right after a burst of allocations — and the pass stops the event loop for as long as it walks
the heap. A storm of deprovisionings is such a burst: measured in the load test (docs/benchmarks.md §9, 500
WebSockets a replica), each replica paused 37-163 ms in full passes in the middle of the storms, with the
revocation broadcasts and the closing of the revoked agents' WebSockets waiting behind them.

``[server] full_gc_interval_seconds`` (30 by default; 0 keeps CPython's own schedule) turns the automatic full
passes off in a serving process — the younger generations stay automatic, and short (≤ 11 ms measured) — and runs
one every interval instead, deferred while access is being ended (a deprovisioning started or a revocation applied
within the last second), by at most one more interval. Reference counting still frees everything at once; only
garbage in reference cycles waits, for two intervals at most.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("channelgate.collector")

#: How long after the last sign of access being ended a full pass still waits.
QUIET_SECONDS = 1.0
#: A generation-2 threshold that is never reached: CPython counts generation-1 passes against it.
_NEVER = 2**31 - 1


class FullCollections:
    def __init__(self, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._quiet_from = 0.0
        #: Full passes run, and how many were deferred because access was being ended (for tests and metrics).
        self.runs = 0
        self.deferred = 0

    def ending_access(self) -> None:
        """A deprovisioning started or a revocation is being applied here: no full pass for a moment."""
        self._quiet_from = time.monotonic() + QUIET_SECONDS

    async def run_forever(self) -> None:
        first, second, third = gc.get_threshold()
        gc.set_threshold(first, second, _NEVER)
        try:
            while True:
                await asyncio.sleep(self._interval)
                latest = time.monotonic() + self._interval
                if time.monotonic() < self._quiet_from:
                    self.deferred += 1
                # Until a second passed without a deprovisioning or revocation here (the mark moves on with each).
                while (wait := min(self._quiet_from, latest) - time.monotonic()) > 0:  # noqa: ASYNC110 - a deadline
                    await asyncio.sleep(wait)
                started = time.perf_counter()
                gc.collect(2)
                self.runs += 1
                log.debug("full garbage collection took %.1f ms", (time.perf_counter() - started) * 1000)
        finally:
            gc.set_threshold(first, second, third)
