"""Throughput of one replica against two, inline and behind forward-auth; memory per 10,000 live sessions.

The load test's stack (bench/load_stack.py: PostgreSQL, one Redis, two replicas, nginx with the upstream and two
``auth_request`` fronts) and its agents' sessions. The same load generator setting for every target: two wrk
processes (``-t1 -cN`` each, closed loop, each request one agent's cookie in turn over the three consoles). One
replica: both aim at replica 0. Two replicas: one each. Forward-auth: both aim at nginx, whose ``auth_request``
asks one replica, or an upstream group of both. While each runs, the CPU time of every server is read from /proc,
so the figures say what the machine had left to give. Then the inline targets again with every replica held to a
share of a CPU (``CAPS``, bench/cpu_cap.py): the machine keeps CPU for the load generator and the stores, and the
ratio says what a second replica adds, not what two CPUs shared with everything else allow.

Memory per 10,000 sessions: 10,000 more sessions written through ``RedisSessionStore.create`` (Redis
``used_memory`` before and after), then every one of them used once through a replica without the session cache
and through one with ``[sessions] local_cache_seconds`` (a gateway process of its own on the same Redis), the
replica's resident memory read before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from bench import cpu_cap
from bench.load_stack import LoadAgent, LoadStack, session_template, write_sessions_to
from bench.load_wrk import WrkLoadResult, run_wrk_load, write_agents
from bench.procstat import CpuWindow, rss_kib
from bench.stack import Gateway

GOAL_SCALING = 1.7
#: One replica cannot keep more than one CPU busy: with the machine this busy during its run, other work (not the
#: load test's) took CPU from it, and the round's ratio says nothing about the gateway.
CONTENDED_BUSY = 0.9
CACHE_ENV = "CHANNELGATE_SESSIONS__LOCAL_CACHE_SECONDS"

#: The CPU each replica may use in the capped rounds (as a Kubernetes ``limits.cpu`` sets it): one replica and two
#: get the same CPU each, and the machine keeps the rest for wrk, nginx, Redis and PostgreSQL (bench/cpu_cap.py).
#: The goal's verdict is the first cap's, where that rest is largest; the second shows what nearer the machine's
#: two CPUs does.
CAPS = (0.35, 0.5)


def _capped(replicas: int, cap: float) -> str:
    return f"inline-{replicas}-cap{round(cap * 100)}"


TARGETS: dict[str, str] = {
    "inline-1": "inline, 1 replica",
    "inline-2": "inline, 2 replicas",
    "forward-auth-1": "nginx `auth_request` → 1 replica",
    "forward-auth-2": "nginx `auth_request` → 2 replicas (upstream group)",
    **{
        _capped(n, cap): f"inline, {n} replica{'s' if n > 1 else ''} held to {cap:g} CPU{' each' if n > 1 else ''}"
        for cap in CAPS
        for n in (1, 2)
    },
}
#: Target → the CPU cap of every replica while it runs.
CAPPED = {_capped(n, cap): cap for cap in CAPS for n in (1, 2)}


@dataclass
class Measured:
    runs: list[WrkLoadResult]
    cpu: CpuWindow

    @property
    def rps(self) -> float:
        return sum(run.summary.requests_per_second for run in self.runs)

    @property
    def p50_ms(self) -> float:
        return statistics.fmean(run.summary.p50_ms for run in self.runs)

    @property
    def p99_ms(self) -> float:
        return max(run.summary.p99_ms for run in self.runs)

    @property
    def non_2xx(self) -> int:
        return sum(run.summary.non_2xx + run.summary.socket_errors for run in self.runs)

    @property
    def gateway_cpu(self) -> float:
        """CPU seconds the replicas used per second of the run (1.0 = one CPU kept busy)."""
        used = sum(v for k, v in self.cpu.used.items() if k.startswith("replica"))
        return used / self.cpu.wall_seconds if self.cpu.wall_seconds else 0.0


@dataclass
class SessionMemory:
    sessions: int
    redis_bytes: int
    #: Replica → (resident KiB before, after, requests that used the sessions).
    replicas: dict[str, tuple[int, int, int]] = field(default_factory=dict)


@dataclass
class ScalingResult:
    duration: float
    connections: int
    #: Whether the capped rounds ran (bench/cpu_cap.py: root and a cgroup cpu controller).
    capped: bool = False
    rounds: list[dict[str, Measured]] = field(default_factory=list)
    memory: SessionMemory | None = None

    def median(self, target: str, attribute: str) -> float:
        return float(statistics.median(getattr(r[target], attribute) for r in self.rounds))

    def ratios(self, numerator: str, denominator: str, attribute: str = "rps") -> list[float]:
        return [getattr(r[numerator], attribute) / getattr(r[denominator], attribute) for r in self.rounds]

    def per_cpu(self, target: str) -> list[float]:
        """Requests per CPU-second of the replicas."""
        return [r[target].rps / r[target].gateway_cpu for r in self.rounds if r[target].gateway_cpu]

    def contended(self, round_: dict[str, Measured]) -> bool:
        """The machine was nearly saturated while one replica ran alone: other work competed for it."""
        return round_["inline-1"].cpu.machine_busy_fraction >= CONTENDED_BUSY


def _log(message: str) -> None:
    print(f"[scaling] {message}", file=sys.stderr, flush=True)


def _urls(stack: LoadStack, target: str) -> list[str]:
    gateway = stack.gateway
    return {
        "inline-1": [gateway.url(0), gateway.url(0)],
        "inline-2": [gateway.url(0), gateway.url(1)],
        **{_capped(1, cap): [gateway.url(0), gateway.url(0)] for cap in CAPS},
        **{_capped(2, cap): [gateway.url(0), gateway.url(1)] for cap in CAPS},
        "forward-auth-1": [stack.nginx.forward_auth_url("fa_one")] * 2,
        "forward-auth-2": [stack.nginx.forward_auth_url("fa_two")] * 2,
    }[target]


async def _measure(
    urls: list[str], agents_file: Path, roots: dict[str, int], *, duration: float, warmup: float, connections: int
) -> Measured:
    def load(seconds: float) -> list[asyncio.Task[WrkLoadResult]]:
        return [
            asyncio.create_task(
                run_wrk_load(f"w{i}", url, agents_file, duration=seconds, connections=connections, tag=False)
            )
            for i, url in enumerate(urls)
        ]

    if warmup > 0:
        await asyncio.gather(*load(warmup))
    cpu = CpuWindow(roots)
    cpu.start()
    runs = await asyncio.gather(*load(duration))
    cpu.stop()
    return Measured(list(runs), cpu)


async def run_scaling(
    stack: LoadStack,
    cookies: dict[str, str],
    work: Path,
    *,
    duration: float,
    warmup: float,
    rounds: int,
    connections: int = 25,
    roots: dict[str, int],
    memory_sessions: int = 10_000,
    cached_database_url: str | None = None,
) -> ScalingResult:
    """``rounds`` rounds over the targets, in alternating order; then the memory of ``memory_sessions``."""
    agents_file = write_agents(work / "scaling-agents.txt", cookies)
    result = ScalingResult(duration, connections, capped=cpu_cap.available())
    order = [t for t in TARGETS if result.capped or t not in CAPPED]
    for number in range(rounds):
        measured: dict[str, Measured] = {}
        for target in order if number % 2 == 0 else list(reversed(order)):
            with contextlib.ExitStack() as caps:
                if target in CAPPED:
                    # Every replica held to the cap, each in a group of its own (the idle one too, for symmetry).
                    for index, pid in enumerate(stack.gateway.pids):
                        name = f"channelgate-bench-{os.getpid()}-{index}"
                        caps.enter_context(cpu_cap.CpuCap(name, CAPPED[target])).add(pid)
                measured[target] = await _measure(
                    _urls(stack, target), agents_file, roots, duration=duration, warmup=warmup, connections=connections
                )
            m = measured[target]
            _log(f"round {number + 1}: {target} {m.rps:,.0f} req/s p99 {m.p99_ms:.1f} ms, replicas "
                 f"{m.gateway_cpu:.2f} CPU, machine {m.cpu.machine_busy_fraction * 100:.0f} % busy")  # fmt: skip
        result.rounds.append(measured)
    if memory_sessions:
        rate = result.median("inline-1", "rps") if result.rounds else 300.0
        result.memory = await _session_memory(stack, work, memory_sessions, cached_database_url, rate)
    return result


async def _used_memory(redis_url: str) -> int:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        return int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()


async def _use_every_session(url: str, agents_file: Path, size: int, rate_hint: float) -> int:
    """At least one request per session of the file (a single wrk thread takes the list in order, from a place of
    its own, round and round); returns how many were sent. A run that ended too soon is made again, longer."""
    seconds = max(3.0, math.ceil(size / rate_hint * 1.5))
    while True:
        run = await run_wrk_load("memory", url, agents_file, duration=seconds, connections=20, tag=False)
        if run.summary.total_requests >= size:
            return run.summary.total_requests
        seconds *= 2


async def _fresh_sessions(stack: LoadStack, count: int, prefix: str, work: Path) -> Path:
    """``count`` new sessions as a real login would store them, for agents ``prefix00000`` …; their wrk file."""
    template = stack.template
    assert template is not None, "open_sessions() first: the sessions copy a real login's"
    agents = [LoadAgent(i, f"{prefix}{i:05d}", f"{prefix}-{uuid.uuid4()}") for i in range(count)]
    await write_sessions_to(stack.redis_url, [(a, session_template(template, a.id, a.name, a.index)) for a in agents])
    return write_agents(work / f"memory-{prefix}.txt", {a.name: a.cookie for a in agents})


async def _session_memory(
    stack: LoadStack, work: Path, count: int, cached_database_url: str | None, rate: float
) -> SessionMemory:
    """Two sets of ``count`` fresh sessions: a replica first serves set A (what the traffic itself makes the
    process grow to), then set B; B's growth is what ``count`` more sessions cost. Redis is measured on B."""
    warm = await _fresh_sessions(stack, count, "warm", work)
    before = await _used_memory(stack.redis_url)
    measured = await _fresh_sessions(stack, count, "mem", work)
    memory = SessionMemory(count, await _used_memory(stack.redis_url) - before)
    cached = Gateway("cached", cached_database_url, stack.gateway.upstream_port, stack.redis_url) if (
        cached_database_url) else None  # fmt: skip
    try:
        if cached is not None:
            os.environ[CACHE_ENV] = "2"
            try:
                cached.start(stack.issuer)
            finally:
                os.environ.pop(CACHE_ENV, None)
        targets = {"replica 1 (no session cache)": (stack.gateway.url(1), stack.gateway.pids[1])}
        if cached is not None:
            targets["a replica with `local_cache_seconds = 2`"] = (cached.url(0), cached.pids[0])
        for label, (url, pid) in targets.items():
            await _use_every_session(url, warm, count, rate)
            await asyncio.sleep(0.5)
            start = rss_kib(pid)
            started = time.monotonic()
            sent = await _use_every_session(url, measured, count, rate)
            await asyncio.sleep(0.5)
            memory.replicas[label] = (start, rss_kib(pid), sent)
            _log(f"{label}: {count:,} sessions used in {time.monotonic() - started:.1f} s, resident "
                 f"{start / 1024:.0f} → {rss_kib(pid) / 1024:.0f} MiB")  # fmt: skip
    finally:
        if cached is not None:
            cached.stop()
    return memory


# -- docs/benchmarks.md --------------------------------------------------------------------------------------


def _each(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _capped_verdict(result: ScalingResult) -> list[str]:
    """The 1-vs-2 ratio with every replica held to each cap, where the load generator leaves the replicas room."""
    if not result.capped:
        return [
            "The capped rounds (each replica held to a share of a CPU) did not run: they need root and a cgroup cpu "
            "controller (bench/cpu_cap.py).",
            "",
        ]
    lines = []
    for number, cap in enumerate(CAPS):
        one, two = _capped(1, cap), _capped(2, cap)
        ratios = result.ratios(two, one)
        median = statistics.median(ratios)
        cpu_one, cpu_two = result.median(one, "gateway_cpu"), result.median(two, "gateway_cpu")
        busy_two = statistics.median(r[two].cpu.machine_busy_fraction for r in result.rounds)
        efficiency = statistics.median(a / b for a, b in zip(result.per_cpu(two), result.per_cpu(one), strict=True))
        head = f"**Two replicas ÷ one, each replica held to {cap:g} CPU: {median:.2f}×** (rounds {_each(ratios)}"
        if number == 0:
            verdict = "met" if median >= GOAL_SCALING else "**missed**"
            head += f"; goal ≥ {GOAL_SCALING}× where the load generator allows it: {verdict})"
        else:
            head += ")"
        lines.append(
            f"{head}: one replica used {cpu_one:.2f} CPU, two {cpu_two:.2f} with the machine {busy_two * 100:.0f} % "
            f"busy; requests per replica CPU-second, two ÷ one, {efficiency:.2f}×."
        )
    lines += [
        "",
        "Capped, each replica runs under a CFS bandwidth limit (`bench/cpu_cap.py`), as a Kubernetes "
        "`resources.limits.cpu` or systemd's `CPUQuota=` would set it, so one replica and two get the same CPU each "
        "and wrk, nginx, Redis and PostgreSQL keep the rest of the machine. The goal's verdict is the first cap's, "
        "where that rest is largest; nearer the two CPUs' limit the machine, not the gateway, sets the ratio again. "
        "Uncapped (next paragraph), the second replica can only have what the rest leaves it.",
        "",
    ]
    return lines


def scaling_section(result: ScalingResult) -> list[str]:
    scaling = result.ratios("inline-2", "inline-1")
    clean = [ratio for ratio, r in zip(scaling, result.rounds, strict=True) if not result.contended(r)]
    median_scaling = statistics.median(clean or scaling)
    efficiency = [two / one for two, one in zip(result.per_cpu("inline-2"), result.per_cpu("inline-1"), strict=True)]
    cpu_one = result.median("inline-1", "gateway_cpu")
    cpu_two = result.median("inline-2", "gateway_cpu")
    busy_one = statistics.median(r["inline-1"].cpu.machine_busy_fraction for r in result.rounds)
    busy_two = statistics.median(r["inline-2"].cpu.machine_busy_fraction for r in result.rounds)
    verdict = "met" if median_scaling >= GOAL_SCALING else "**missed**"
    if not clean:
        verdict = "no verdict: in every round other work kept the machine saturated while one replica ran"
    elif len(clean) < len(scaling):
        verdict += f"; {len(scaling) - len(clean)} round(s) left out, the machine saturated by other work"
    if result.capped:
        verdict = f"{verdict} uncapped (the capped ratio above is where the load generator allows the goal's measure)"
    lines = [
        "## 10. Scaling: one replica against two, inline and forward-auth",
        "",
        f"The stack of section 9 (PostgreSQL, Redis sessions without the in-process cache), its live agents' "
        f"sessions. The same load generator setting for every target: two `wrk -t1 -c{result.connections}` "
        f"processes for {result.duration:g} s after a warm-up, closed loop, each request one agent's cookie in "
        "turn over `/chat/`, `/phone/`, `/mail/`; one replica: both at replica 0; two replicas: one each; "
        "forward-auth: both at nginx, whose `auth_request` asks one replica or an upstream group of both, then "
        f"`proxy_pass`es to the upstream. {len(result.rounds)} round(s) in alternating order; medians, with each "
        "round's value after the ratios. *Replica CPU* is the CPU seconds both replicas used per second (1.00 = one "
        "CPU kept busy), read from /proc; *busy* is the whole machine's (other work on it included). Source: "
        "`bench/scaling.py`.",
        "",
        "| target | req/s | p50 ms | p99 ms (worse wrk) | non-2xx + socket errors | replica CPU | machine busy "
        "| req per replica CPU-second |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target, label in TARGETS.items():
        if target in CAPPED and not result.capped:
            continue
        per_cpu = result.per_cpu(target)
        lines.append(
            f"| {label} | {result.median(target, 'rps'):,.0f} | {result.median(target, 'p50_ms'):.2f} | "
            f"{result.median(target, 'p99_ms'):.2f} | {sum(r[target].non_2xx for r in result.rounds)} | "
            f"{result.median(target, 'gateway_cpu'):.2f} | "
            f"{statistics.median(r[target].cpu.machine_busy_fraction for r in result.rounds) * 100:.0f} % | "
            f"{statistics.median(per_cpu) if per_cpu else float('nan'):,.0f} |"
        )
    forward = result.ratios("forward-auth-1", "inline-1")
    forward_two = result.ratios("forward-auth-2", "inline-2")
    lines += ["", *_capped_verdict(result)]
    lines += [
        f"**Two replicas ÷ one: {median_scaling:.2f}×** (rounds {_each(scaling)}; goal ≥ {GOAL_SCALING}× on this "
        f"machine's limits: {verdict}; a round counts when the machine was less than {CONTENDED_BUSY * 100:.0f} % busy "
        "while one replica ran alone, since one replica keeps at most one of the machine's CPUs busy). Requests per "
        "replica CPU-second, two replicas ÷ one: "
        f"{statistics.median(efficiency):.2f}× (rounds {_each(efficiency)}; 1.00 would mean a second replica "
        "costs nothing more per request: nothing in the request path is shared between replicas but Redis and "
        "PostgreSQL). "
        f"One replica kept {cpu_one:.2f} CPU busy with the machine {busy_one * 100:.0f} % busy; two kept "
        f"{cpu_two:.2f} CPU busy with it {busy_two * 100:.0f} % busy: the ratio of the replicas' CPU "
        f"({cpu_two / cpu_one if cpu_one else float('nan'):.2f}×) is what the machine had left to give the second "
        "replica after wrk, nginx, Redis, PostgreSQL and the other work on it, and bounds the scaling this machine "
        "can show.",
        "",
        f"Forward-auth ÷ inline: {statistics.median(forward):.2f}× with one replica (rounds {_each(forward)}), "
        f"{statistics.median(forward_two):.2f}× with two (rounds {_each(forward_two)}). Behind forward-auth a "
        "replica only decides (session, policy, the channel credential and the signed assertion, returned as "
        "headers) and nginx relays the request and the answer; inline, the replica relays both through Python too "
        "(see requests per replica CPU-second), while nginx's sub-request and proxying take CPU from the same "
        "machine.",
        "",
    ]
    if result.memory is not None:
        memory = result.memory
        per_session = memory.redis_bytes / memory.sessions
        lines += [
            f"### Memory per {memory.sessions:,} live sessions",
            "",
            f"Two sets of {memory.sessions:,} new sessions written through `RedisSessionStore.create`, each with the "
            "data a real login stores (groups, acr/amr, the ID token kept for `id_token_hint`, copied from a real "
            "login for its size). A replica serves one request (or more) for every session of the first set, which "
            "lets the process grow to what that traffic needs, then for every session of the second: the second "
            "set's growth is what the sessions cost. Redis is measured on writing the second set.",
            "",
            "| where | per 10,000 sessions | per session |",
            "|---|---:|---:|",
            f"| Redis `used_memory` | {per_session * 10_000 / 2**20:.1f} MiB | {per_session:,.0f} bytes |",
        ]
        for label, (before, after, sent) in memory.replicas.items():
            delta = (after - before) * 1024
            lines.append(
                f"| {label}: resident memory ({sent:,} requests) | {delta * 10_000 / memory.sessions / 2**20:.1f} MiB "
                f"| {delta / memory.sessions:,.0f} bytes |"
            )
        lines += [
            "",
            "Without the session cache, what a replica keeps per agent is the identity assertion it last signed "
            "for each channel (`gateway/proxy/assertion.py`: reused for half its lifetime, at most 10,000 kept, "
            "seen with tracemalloc), so its growth stops there; with it, each valid session read is also kept "
            "until it is read again stale, the agent is revoked or logged out, or the cache reaches 100,000 "
            "entries and is emptied (`gateway/sessions/local_cache.py`): that many sessions bound its memory.",
            "",
        ]
    return lines
