"""The channel credential cache in front of the vault: one read per second per channel, shared by concurrent
callers, and a rotated credential seen once the second has passed."""

from __future__ import annotations

import asyncio

from connectors.context import CREDENTIAL_CACHE_SECONDS, cached_credential
from connectors.secret import Secret


async def test_concurrent_callers_share_one_read_and_a_rotation_is_seen_after_the_cache_time() -> None:
    now = [100.0]
    reads: list[str] = []
    stored = ["first"]

    async def load() -> Secret:
        reads.append(stored[0])
        await asyncio.sleep(0)
        return Secret(stored[0])

    read = cached_credential(load, clock=lambda: now[0])
    values = await asyncio.gather(*(read() for _ in range(20)))
    assert {v.reveal() for v in values} == {"first"} and reads == ["first"]
    stored[0] = "rotated"
    now[0] += CREDENTIAL_CACHE_SECONDS / 2
    assert (await read()).reveal() == "first"
    now[0] += CREDENTIAL_CACHE_SECONDS
    assert (await read()).reveal() == "rotated" and reads == ["first", "rotated"]
