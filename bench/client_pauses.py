"""Keep the benchmark client's own garbage-collector pauses out of a timed window.

The revocation benchmarks time a deprovision from the client's side: from the call's start until a poller sees the
refusal. The client is a Python process too, and a full (generation 2) pass of its cyclic garbage collector that
starts inside that window delays the call by as long as the pass takes, and that delay was counted as the
gateway's. Measured with the forward-auth revocation trials (§8): one trial in about 100, at the same trial number
run after run (the collector runs after a fixed count of allocations), took 60-100 ms instead of 5-10 ms, and the
55 ms was the client's own pass, logged between the call's start and the gateway receiving it. The gateway's
pauses still count: only the process measuring is kept quiet.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def client_collector_paused() -> Iterator[None]:
    """Collect now, then run the block without automatic collections of this process (it must be short)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
