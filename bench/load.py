"""The load test (issue 8): agents on three consoles over HTTP and WebSocket, two replicas, a deprovisioning storm.

Set-up (bench/load_stack.py): agents provisioned over SCIM, sessions from real logins for a sample and from the
store for the rest, one WebSocket per agent to the chat console (bench/load_ws.py, in a process of its own).
Load: one wrk per replica (bench/load_wrk.lua), every request one agent's in turn over ``/chat/``, ``/phone/``,
``/mail/``, each connection pausing a random think time so the agents together offer ``rate`` requests per
second each. Under that load, first agents are deprovisioned one at a time (admin API, each watched by a
poller per replica), then the storm: ``storm`` agents at once, half through each replica.

Per deprovisioned agent: the call's start and return, the moment its sessions left Redis (the keyspace event of
its session index: from then on every replica refuses it, there being no in-process session cache here), the
first refusal a poller saw, and the close of its WebSocket (code 1008). The checks (bench/load_checks.py) hold
every request sent and every request the upstream served against those moments.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from bench.load_checks import Moments, RequestChecks, SocketChecks, check_requests, check_sockets
from bench.load_stack import LoadAgent, LoadStack
from bench.load_wrk import Tagged, WrkLoadResult, read_tagged, run_wrk_load, write_agents
from bench.load_ws import Target, WebSocketFleet
from bench.procstat import CpuWindow, RssSampler, rss_kib
from bench.stack import SESSION_COOKIE
from gateway.sessions.redis_scripts import AGENT_PREFIX

#: A revocation (both replicas refusing, the WebSocket closed) must complete within this, at p99.
GOAL_P99_MS = 100.0
POLL_TIMEOUT = 15.0


@dataclass(frozen=True)
class LoadPlan:
    agents: int = 1000
    storm: int = 100
    #: Agents deprovisioned one at a time under the load, before the storm.
    single: int = 50
    #: Agents whose session comes from the real OIDC login.
    logins: int = 20
    duration: float = 60.0
    #: Requests per agent per second offered over HTTP (wrk's think time is set from it).
    rate: float = 0.5
    #: wrk connections per replica.
    connections: int = 50
    #: Mean seconds between two messages of an agent's WebSocket.
    ws_interval: float = 5.0
    #: When the one-at-a-time revocations and the storm start, as fractions of ``duration``.
    single_at: float = 0.2
    storm_at: float = 0.5
    #: Storms of ``storm`` agents each, ``storm_gap`` of ``duration`` apart: one storm's p99 moves a lot from run
    #: to run, so the report gives every storm's and their median.
    storms: int = 1
    storm_gap: float = 0.12

    @property
    def gap_seconds(self) -> float:
        return self.storm_gap * self.duration

    @property
    def mean_delay_ms(self) -> float:
        replicas = 2
        return 1000.0 * self.connections * replicas / (self.agents * self.rate)

    def roles(self, agents: list[LoadAgent]) -> tuple[list[LoadAgent], list[LoadAgent]]:
        """(one at a time, storm): half the real logins go to each group's head, the rest spread over the agents."""
        half = self.logins // 2
        single = agents[half : half + self.single]
        start = half + self.single
        wanted = self.storm * self.storms - half
        span = len(agents) - start
        spread = [agents[start + int(n * span / wanted)] for n in range(wanted)] if wanted > 0 else []
        return single, agents[:half] + spread


@dataclass
class Revoked:
    agent: str
    phase: str
    replica_called: int
    ws_replica: int
    started: float
    returned: float
    status: int
    replicas_missing: list[str]
    reported_ms: float
    killed: float | None = None
    ws_closed: float | None = None
    #: Poller replica → arrival of its first 401 (seconds, monotonic).
    first_refusal: dict[int, float] = field(default_factory=dict)
    #: Which storm the call was part of (0 for the one-at-a-time calls and the first storm).
    wave: int = 0

    def since_start(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.started

    @property
    def completed(self) -> float | None:
        """Start → sessions gone from Redis and the WebSocket closed (None if either was never seen)."""
        if self.killed is None or self.ws_closed is None:
            return None
        return max(self.killed, self.ws_closed) - self.started


@dataclass
class LoadResult:
    plan: LoadPlan
    replicas: int
    provision_seconds: float
    sessions_seconds: float
    wrk: list[WrkLoadResult]
    revoked: list[Revoked]
    requests: RequestChecks
    sockets: SocketChecks
    ws_rtts: list[float]
    poller_errors: int
    #: Replica → resident KiB: after the sessions, with every WebSocket open, peak under load, after the load.
    memory: dict[str, dict[str, int]]
    redis_kib: tuple[int, int]
    cpu: CpuWindow
    load_seconds: float
    #: The agents never deprovisioned: name → session cookie (section 10 loads with them).
    live: dict[str, str] = field(default_factory=dict)
    #: Seconds into the load when the storm's calls started.
    storm_at: float = 0.0

    def of(self, phase: str) -> list[Revoked]:
        return [r for r in self.revoked if r.phase == phase]

    @property
    def failures(self) -> list[str]:
        """Every check that must hold, with what broke it; empty when the run is correct."""
        req, ws = self.requests, self.sockets
        problems = {
            "requests served after their agent's deprovisioning returned": len(req.late_after_return),
            "requests served after their agent's sessions were deleted": len(req.late_after_kill),
            "requests of live agents not served": len(req.refused_live),
            "requests refused before their agent's deprovisioning": len(req.refused_early),
            "served requests missing from the send logs": req.unaccounted,
            "deprovisioning calls not answered 200": sum(r.status != 200 for r in self.revoked),
            "deprovisionings with a replica missing its acknowledgement": sum(bool(r.replicas_missing) for r in
                                                                              self.revoked),
            "deprovisionings whose session deletion was not seen": sum(r.killed is None for r in self.revoked),
            "WebSockets that failed": len(ws.failed),
            "WebSockets not opened": ws.sockets - ws.opened,
            "revoked agents' WebSockets not closed with 1008": len(ws.revoked_not_closed),
            "live agents' WebSockets closed": len(ws.live_closed),
            "echoes naming another agent": ws.wrong_agent,
            "echoes lost on live WebSockets": ws.lost_echoes,
            "wrk socket errors": sum(run.summary.socket_errors for run in self.wrk),
            "HTTP statuses other than 200 and 401": sum(
                count for run in self.wrk for code, count in run.statuses.items() if code not in (200, 401)
            ),
            "poller answers other than 200 and 401": self.poller_errors,
        }  # fmt: skip
        return [f"{name}: {count}" for name, count in problems.items() if count]


def _log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


def _tag(agent: str, seq: str, sent: float) -> str:
    return f"?a={agent}&s={seq}&t={int(sent * 1e6)}"


class _Traffic:
    """The pollers' and the calls' side of the test, in the test's own event loop."""

    def __init__(self, stack: LoadStack, http: aiohttp.ClientSession, calls: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        #: A connection per call: a kept-alive one the server closes as idle would fail a POST (never retried).
        self.calls = calls
        self.sent: list[Tagged] = []
        self.errors = 0

    async def poll(self, agent: LoadAgent, replica: int, ready: asyncio.Event) -> float | None:
        """Request ``/chat/`` as the agent until refused; return when the first 401 arrived."""
        base = f"{self.stack.gateway.url(replica)}/chat/"
        headers = {"Cookie": f"{SESSION_COOKIE}={agent.cookie}"}
        deadline = time.monotonic() + POLL_TIMEOUT
        number = ok = 0
        while time.monotonic() < deadline:
            number += 1
            seq = f"poll-{agent.name}-{replica}-{number}"
            sent = time.monotonic()
            self.sent.append(Tagged(agent.name, seq, sent))
            try:
                async with self.http.get(base + _tag(agent.name, seq, sent), headers=headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                self.errors += 1
                continue
            if status == 401:
                return time.monotonic()
            if status != 200:
                self.errors += 1
                continue
            ok += 1
            if ok >= 3:
                ready.set()
        return None

    async def deprovision(
        self, agent: LoadAgent, replica: int, phase: str, ws_replica: int, via: aiohttp.ClientSession | None = None
    ) -> Revoked:
        url = f"{self.stack.gateway.url(replica)}/.channelgate/admin/agents/{agent.name}/deprovision"
        headers = {"Authorization": f"Bearer {self.stack.gateway.admin_token}"}
        started = time.monotonic()
        async with (via or self.calls).post(url, json={"reason": "load test"}, headers=headers) as response:
            body = await response.json(content_type=None)
            status = response.status
        returned = time.monotonic()
        ok = status == 200
        return Revoked(
            agent.name, phase, replica, ws_replica, started, returned, status,
            list(body.get("replicas_missing", [])) if ok else [], float(body.get("duration_ms", 0.0)) if ok else 0.0,
        )  # fmt: skip


async def _watch_kills(redis_url: str, names: dict[str, str], killed: dict[str, float], ready: asyncio.Event) -> None:
    """Note when each agent's session index is deleted (the revoke script deletes it with the sessions)."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        await redis.config_set("notify-keyspace-events", "Eg")
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe("__keyevent@0__:del")
            ready.set()
            async for message in pubsub.listen():
                if message["type"] != "message" or not str(message["data"]).startswith(AGENT_PREFIX):
                    continue
                name = names.get(str(message["data"])[len(AGENT_PREFIX) :])
                if name is not None:
                    killed.setdefault(name, time.monotonic())
    finally:
        await redis.aclose()


async def _redis_kib(redis_url: str) -> int:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        return int((await redis.info("memory"))["used_memory"]) // 1024
    finally:
        await redis.aclose()


async def _redis_pid(redis_url: str) -> int:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        return int((await redis.info("server"))["process_id"])
    finally:
        await redis.aclose()


async def _one_at_a_time(traffic: _Traffic, agents: list[LoadAgent], replicas: int) -> list[Revoked]:
    done = []
    for number, agent in enumerate(agents):
        ready = [asyncio.Event() for _ in range(replicas)]
        pollers = [asyncio.create_task(traffic.poll(agent, r, ready[r])) for r in range(replicas)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), POLL_TIMEOUT)
        revoked = await traffic.deprovision(agent, number % replicas, "one at a time", agent.index % replicas)
        for replica, refused in enumerate(await asyncio.gather(*pollers)):
            if refused is not None:
                revoked.first_refusal[replica] = refused
        done.append(revoked)
        await asyncio.sleep(0.2)
    return done


async def _storm(traffic: _Traffic, agents: list[LoadAgent], replicas: int, wave: int) -> list[Revoked]:
    """Every agent at once, call ``j`` through replica ``j % replicas``; every tenth watched by a poller on
    another replica than the one called."""
    watched = {j: asyncio.Event() for j in range(0, len(agents), 10)}
    pollers = {
        j: asyncio.create_task(traffic.poll(agents[j], (j + 1) % replicas, event)) for j, event in watched.items()
    }
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in watched.values())), POLL_TIMEOUT)
    # The load generator's own pauses are not the gateway's latency: a full garbage collection of this process that
    # started while the calls went out (measured: 123 ms, with the run's logs and records alive) delayed the last
    # of them by as much. What is alive now is collected here, once, and left out of the passes that follow.
    gc.collect()
    gc.freeze()
    # The storm's calls go over connections opened just before, one per call, as an IdP's provisioning client keeps
    # its connections alive: opened during the storm, each call's connect and accept waited in line behind the
    # others' on both sides' busy event loops, and that wait was counted as the gateway's revocation latency.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as calls:
        await _open_connections(calls, [traffic.stack.gateway.url(j % replicas) for j in range(len(agents))])
        storm = await asyncio.gather(
            *(traffic.deprovision(a, j % replicas, "storm", a.index % replicas, calls) for j, a in enumerate(agents))
        )
    for j, poller in pollers.items():
        refused = await poller
        if refused is not None:
            storm[j].first_refusal[(j + 1) % replicas] = refused
    for revoked in storm:
        revoked.wave = wave
    return list(storm)


async def _open_connections(session: aiohttp.ClientSession, bases: list[str]) -> None:
    """Leave one idle kept-alive connection in ``session``'s pool per base URL given (all requested at once, so
    none is reused by another). The gateway keeps an idle connection 5 s (uvicorn's default); the calls follow
    within a second."""

    async def probe(base: str) -> None:
        async with session.get(f"{base}/.channelgate/healthz") as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{base} answered {response.status} to /.channelgate/healthz")

    await asyncio.gather(*(probe(base) for base in bases))


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def run_load_test(stack: LoadStack, plan: LoadPlan, work: Path, *, postgres_pid: int | None = None) -> LoadResult:
    """Provision, open sessions and sockets, load, deprovision one at a time then in a storm; check everything."""
    gateway, replicas = stack.gateway, len(stack.gateway.ports)
    began = time.monotonic()
    agents = await stack.provision(plan.agents)
    provisioned = time.monotonic()
    await stack.open_sessions(agents, plan.logins)
    sessions_done = time.monotonic()
    _log(
        f"{len(agents)} agents over SCIM in {provisioned - began:.1f} s, "
        f"sessions in {sessions_done - provisioned:.1f} s"
    )
    single, storm = plan.roles(agents)
    pids = {f"replica {i}": pid for i, pid in enumerate(gateway.pids)}
    memory = {name: {"sessions": rss_kib(pid)} for name, pid in pids.items()}
    redis_before = await _redis_kib(stack.redis_url)

    killed: dict[str, float] = {}
    watching = asyncio.Event()
    watcher = asyncio.create_task(_watch_kills(stack.redis_url, {a.id: a.name for a in agents}, killed, watching))
    await asyncio.wait_for(watching.wait(), 10)
    targets = [Target(a.name, a.index % replicas, f"ws{gateway.url(a.index % replicas)[4:]}/chat/ws", a.cookie)
               for a in agents]  # fmt: skip
    fleet = WebSocketFleet(targets, work, interval=plan.ws_interval, ramp=min(10.0, len(agents) / 100))
    try:
        opened = await fleet.open()
        _log(f"{opened}/{len(agents)} WebSockets open")
        for name, pid in pids.items():
            memory[name]["websockets"] = rss_kib(pid)
        agents_file = write_agents(work / "load-agents.txt", {a.name: a.cookie for a in agents})
        sends = work / "sends"
        sends.mkdir(exist_ok=True)
        stack.nginx.truncate_log()
        roots = {**pids, "redis": await _redis_pid(stack.redis_url), "nginx": stack.nginx.process.pid or 0}
        if postgres_pid is not None:
            roots["postgresql"] = postgres_pid
        if stack.console is not None and stack.console.pid is not None:
            roots["chat console"] = stack.console.pid
        if fleet.pid is not None:
            roots["WebSocket clients"] = fleet.pid
        cpu = CpuWindow(roots)
        revoked: list[Revoked] = []
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as calls,
        ):
            traffic = _Traffic(stack, http, calls)
            cpu.start()
            with RssSampler(pids) as sampler:
                start = time.monotonic()
                runs = [
                    asyncio.create_task(
                        run_wrk_load(
                            f"r{i}", gateway.url(i), agents_file, duration=plan.duration,
                            connections=plan.connections, log_dir=sends, mean_delay_ms=plan.mean_delay_ms,
                        )
                    )
                    for i in range(replicas)
                ]  # fmt: skip
                await _sleep_until(start + plan.single_at * plan.duration)
                revoked += await _one_at_a_time(traffic, single, replicas)
                _log(f"{len(single)} deprovisioned one at a time by {time.monotonic() - start:.1f} s")
                storm_started = 0.0
                for wave in range(plan.storms):
                    at = plan.storm_at + wave * plan.storm_gap
                    await _sleep_until(max(start + at * plan.duration, time.monotonic() + 1.0))
                    started = time.monotonic()
                    if wave == 0:
                        storm_started = started
                    agents_of_wave = storm[wave * plan.storm : (wave + 1) * plan.storm]
                    revoked += await _storm(traffic, agents_of_wave, replicas, wave)
                    _log(f"storm {wave + 1} of {len(agents_of_wave)} at {started - start:.1f} s, answered in "
                         f"{max(r.returned for r in revoked) - started:.2f} s")  # fmt: skip
                wrk = await asyncio.gather(*runs)
                end = time.monotonic()
            cpu.stop()
        for name, pid in pids.items():
            memory[name]["peak"] = sampler.peak_kib[name]
            memory[name]["after"] = rss_kib(pid)
        redis_after = await _redis_kib(stack.redis_url)
        records = await fleet.close()
    finally:
        fleet.kill()
        watcher.cancel()
    closes = {record.agent: record.closed for record in records}
    for item in revoked:
        item.killed = killed.get(item.agent)
        item.ws_closed = closes.get(item.agent)
    await asyncio.sleep(0.5)  # the upstream writes its log line after answering
    sent = list(traffic.sent)
    for log in sends.glob("sent-*.log"):
        sent += read_tagged(log.read_text().splitlines())
    served = list(read_tagged(stack.nginx.served_log.read_text().splitlines()))
    moments = {r.agent: Moments(r.started, r.returned, r.killed) for r in revoked}
    result = LoadResult(
        plan=plan, replicas=replicas, provision_seconds=provisioned - began,
        sessions_seconds=sessions_done - provisioned, wrk=list(wrk), revoked=revoked,
        requests=check_requests(sent, served, moments, end),
        sockets=check_sockets(records, moments), ws_rtts=[rtt for r in records for rtt in r.rtts],
        poller_errors=traffic.errors, memory=memory, redis_kib=(redis_before, redis_after), cpu=cpu,
        load_seconds=end - start, live={a.name: a.cookie for a in agents if a.name not in moments},
        storm_at=storm_started - start,
    )  # fmt: skip
    _log("checks: " + ("all hold" if not result.failures else "; ".join(result.failures)))
    return result
