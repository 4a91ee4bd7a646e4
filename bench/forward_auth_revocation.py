"""§8's revocation latency through nginx: per trial a fresh agent signs in, one client requests ``/chat/`` through
nginx in a loop, and the admin API deprovisions the agent; the latency is from the call's start until nginx refused
(bench/forward_auth.py runs the trials on each setting's gateway, after the throughput rounds).

A request sent after the call returned and still let through would be a late allow (must be 0). The client's own
garbage-collector passes are kept out of the timed window (bench/client_pauses.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from bench.client_pauses import client_collector_paused
from bench.revocation import PollTally, percentile
from bench.stack import SESSION_COOKIE, Gateway, session_cookie


@dataclass
class RevocationTrial:
    variant: str
    #: Seconds from the deprovision call's start until nginx refused the agent.
    refused_after: float
    call_seconds: float
    #: Requests sent after the call returned that were still let through (must be 0).
    late_allows: int


async def revocation_trial(gateway: Gateway, url: str, variant: str, username: str) -> RevocationTrial:
    """Poll ``url`` through nginx with the agent's session until refused; deprovision through the admin API."""
    cookie = await session_cookie(gateway, username)
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    state: dict[str, float | None] = {"t0": None, "returned": None}
    ready = asyncio.Event()

    async def poll(http: aiohttp.ClientSession) -> tuple[float, int]:
        tally = PollTally(url, username, ready, state)
        while True:
            sent = time.perf_counter()
            async with http.get(url, headers=headers, allow_redirects=False) as response:
                await response.read()
                status = response.status
            if status in (401, 403):
                tally.refused()
                return time.perf_counter(), tally.late
            tally.allowed(status, sent)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as http:
        poller = asyncio.create_task(poll(http))
        await asyncio.wait_for(ready.wait(), 10)
        with client_collector_paused():
            t0 = state["t0"] = time.perf_counter()
            async with http.post(
                f"{gateway.url(0)}/.channelgate/admin/agents/{username}/deprovision",
                json={"reason": "forward-auth revocation benchmark"},
                headers={"Authorization": f"Bearer {gateway.admin_token}"},
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"deprovision answered {response.status}: {await response.text()}")
            returned = state["returned"] = time.perf_counter()
            refused, late = await asyncio.wait_for(poller, 10)
    return RevocationTrial(variant, refused - t0, returned - t0, late)


def revocation_section(revocations: list[RevocationTrial], variants: Mapping[str, tuple[str, float, int]]) -> list[str]:
    """§8's revocation table and slowest trials; ``variants`` names each setting: (label, cache seconds, replicas)."""
    lines = [
        "",
        "### Revocation through nginx, per setting",
        "",
        "Per trial a fresh agent logs in, one client requests `/chat/` through nginx in a loop (so a cached session "
        "is hot), and the admin API deprovisions the agent; the latency is from the call's start until nginx "
        "refused. A request sent after the call returned and still let through would be a late allow (must be 0).",
        "",
        "| setting | trials | p50 ms | p99 ms | max ms | late allows | worst case if the broadcast dies silently |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, (label, cache, _) in variants.items():
        trials = [t.refused_after * 1000 for t in revocations if t.variant == name]
        if not trials:
            continue
        late = sum(t.late_allows for t in revocations if t.variant == name)
        worst = f"{cache:g} s (the cache's lifetime)" if cache else "none: every request reads Redis"
        lines.append(
            f"| {label.split(' ', 1)[0]} | {len(trials)} | {percentile(trials, 50):.1f} | "
            f"{percentile(trials, 99):.1f} | {max(trials):.1f} | {late} | {worst} |"
        )
    slowest = []
    for name, (label, _, _) in variants.items():
        mine = [t for t in revocations if t.variant == name]
        ranked = sorted(range(len(mine)), key=lambda i: mine[i].refused_after, reverse=True)[:3]
        shown = ", ".join(
            f"#{i + 1} {mine[i].refused_after * 1000:.1f} ms (call {mine[i].call_seconds * 1000:.0f} ms)"
            for i in ranked
        )
        if shown:
            slowest.append(f"{label.split(' ', 1)[0]} {shown}")
    if slowest:
        lines += ["", "Slowest trials of each setting (trial number in run order): " + "; ".join(slowest) + "."]
    return lines
