"""Retry delays: exponential backoff with full jitter.

Attempt n (1-based, the one that just failed) waits ``uniform(0, min(cap, base * 2**(n-1)))`` seconds. The jitter
spreads the retries of a bulk offboarding that all failed at the same moment (a channel outage), so the channel
is not hit by all of them again at the same instant when it comes back ("Exponential Backoff And Jitter",
AWS Architecture Blog, 2015).
"""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay(
    attempt: int, base: float, cap: float, *, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    ceiling = min(cap, base * 2 ** max(0, min(attempt - 1, 62)))
    return uniform(0.0, ceiling)
