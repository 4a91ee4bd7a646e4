"""Revocation latency: how long after a deprovision call starts does every replica refuse the agent's session?

Two gateway replicas share one Redis session store and one database. Per trial a fresh agent logs in (a
deprovisioned agent cannot log in again), one poller per replica requests ``/chat/`` with that session in a tight
loop, and the deprovision is called — through the admin API of replica ``trial % 2`` (the kill itself, without
an interpreter start-up) or through the CLI (``channelgate agents deprovision``, a new Python process). The latency
of a replica is the time from the call's start until the first 401 response from that replica arrived; it is
therefore quantised by one poll round trip, which is reported beside it.

A request that was *sent* after the deprovision call returned and still answered 200 would break the promise
"deprovisioned means refused everywhere": those are counted as ``late_allows`` (must be zero).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from bench.client_pauses import client_collector_paused
from bench.stack import SESSION_COOKIE, Gateway, session_cookie

TRIAL_TIMEOUT = 10.0


@dataclass
class Trial:
    method: str
    replica_called: int
    #: Per replica: seconds from the call's start to the first 401 received from that replica.
    refused_after: list[float]
    #: Seconds the deprovision call itself took (admin API round trip, or the whole CLI process).
    call_seconds: float
    #: The kill's own measurement, as the gateway reports it (``duration_ms`` of the result).
    reported_ms: float
    replicas_missing: list[str]
    late_allows: int
    poll_rtt_ms: float
    #: Responses in flight at the kill whose body the gateway cut (headers said 200, the body never came).
    cut_responses: int = 0

    @property
    def worst(self) -> float:
        return max(self.refused_after)


@dataclass
class RevocationResult:
    database: str
    trials: list[Trial] = field(default_factory=list)

    def of(self, method: str) -> list[Trial]:
        return [trial for trial in self.trials if trial.method == method]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is one that was really observed)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def _log(message: str) -> None:
    print(f"[revocation] {message}", file=sys.stderr, flush=True)


@dataclass
class PollTally:
    """One revocation poller's answers: a refusal must come after the deprovision call started (``state["t0"]``),
    every other answer must be 200, one sent after the call returned (``state["returned"]``) is a late allow, and
    the poller is ready once three were allowed."""

    url: str
    who: str
    ready: asyncio.Event
    state: dict[str, float | None]
    ok: int = 0
    late: int = 0

    def refused(self) -> None:
        if self.state["t0"] is None:
            raise RuntimeError(f"{self.url} refused {self.who} before the deprovision call")

    def allowed(self, status: int, sent: float) -> None:
        if status != 200:
            raise RuntimeError(f"{self.url} answered {status} while polling")
        self.ok += 1
        returned = self.state["returned"]
        if returned is not None and sent > returned:
            self.late += 1
        if self.ok >= 3:
            self.ready.set()


async def _poll(
    http: aiohttp.ClientSession, url: str, cookie: str, started: asyncio.Event, state: dict[str, float | None]
) -> tuple[float, int, list[float], int]:
    """Request ``url`` until a 401 arrives; return (arrival time of the 401, late allows, round trips, cut
    responses)."""
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    tally = PollTally(url, "the session", started, state)
    rtts: list[float] = []
    cut = 0
    while True:
        sent = time.perf_counter()
        try:
            async with http.get(url, headers=headers, allow_redirects=False) as response:
                status = response.status
                await response.read()
                arrived = time.perf_counter()
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            # The kill aborts responses still streaming to the agent (by design): the body never completes.
            if state["t0"] is None:
                raise
            cut += 1
            continue
        rtts.append(arrived - sent)
        if status == 401:
            tally.refused()
            return arrived, tally.late, rtts, cut
        tally.allowed(status, sent)


async def _trial(gateway: Gateway, username: str, number: int, method: str) -> Trial:
    cookie = await session_cookie(gateway, username)
    replica = number % 2
    state: dict[str, float | None] = {"t0": None, "returned": None}
    # One connection per replica, kept alive: the poll measures the gateway, not TCP set-up.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as http:
        ready = [asyncio.Event() for _ in gateway.ports]
        pollers = [
            asyncio.create_task(_poll(http, gateway.url(i) + "/chat/", cookie, ready[i], state))
            for i in range(len(gateway.ports))
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), TRIAL_TIMEOUT)
        with client_collector_paused():
            t0 = time.perf_counter()
            state["t0"] = t0
            if method == "admin_api":
                async with http.post(
                    f"{gateway.url(replica)}/.channelgate/admin/agents/{username}/deprovision",
                    json={"reason": "revocation benchmark"},
                    headers={"Authorization": f"Bearer {gateway.admin_token}"},
                ) as response:
                    body = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"deprovision answered {response.status}: {body}")
            else:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "--config", str(gateway.config_path),
                    "agents", "deprovision", username, "--reason", "revocation benchmark",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(f"CLI deprovision failed ({process.returncode}): {err.decode()}")
                body = json.loads(out)
            returned = time.perf_counter()
            state["returned"] = returned
            results = await asyncio.wait_for(asyncio.gather(*pollers), TRIAL_TIMEOUT)
    rtts = [rtt for _, _, replica_rtts, _ in results for rtt in replica_rtts]
    return Trial(
        method=method,
        replica_called=replica if method == "admin_api" else -1,
        refused_after=[arrived - t0 for arrived, _, _, _ in results],
        call_seconds=returned - t0,
        reported_ms=float(body["duration_ms"]),
        replicas_missing=list(body.get("replicas_missing", [])),
        late_allows=sum(late for _, late, _, _ in results),
        cut_responses=sum(cut for _, _, _, cut in results),
        poll_rtt_ms=statistics.median(rtts) * 1000,
    )


async def run_revocation(gateway: Gateway, *, api_trials: int, cli_trials: int, database: str) -> RevocationResult:
    """``api_trials`` admin-API trials then ``cli_trials`` CLI trials, each on a fresh agent ``agentNNN``."""
    result = RevocationResult(database=database)
    plan = ["admin_api"] * api_trials + ["cli"] * cli_trials
    for number, method in enumerate(plan):
        trial = await _trial(gateway, f"agent{number:03d}", number, method)
        result.trials.append(trial)
        if (number + 1) % 10 == 0 or method == "cli":
            _log(
                f"trial {number + 1}/{len(plan)} ({method}): refused after "
                + ", ".join(f"{value * 1000:.1f} ms" for value in trial.refused_after)
                + f"; call {trial.call_seconds * 1000:.1f} ms"
            )
    return result
