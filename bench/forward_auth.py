"""nginx ``auth_request`` → channelgate's /.channelgate/auth versus nginx ``proxy_pass`` alone, same run, same load.

One nginx (one worker, like the single-process Python servers) serves four things: the upstream (``return 200``),
``proxy_pass`` to it (the baseline), ``auth_request`` to channelgate then ``proxy_pass`` (Redis sessions, the
shipped policies, the channel credential and the signed assertion set upstream), and ``auth_request`` to a
trivial Starlette endpoint (bench/trivial_auth.py: what a Python decision costs before it decides anything).
Every gateway variant is started in turn with its own ``[sessions]`` setting; the load is ``wrk -t2 -c50`` with
a logged-in agent's cookie. Around each measured run the CPU time of every process involved is read from /proc, so
the section shows per request what each one cost against what the goal's rate leaves on this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.forward_auth_cpu import CpuWindow, cpu_section
from bench.forward_auth_revocation import RevocationTrial, revocation_section, revocation_trial
from bench.stack import SESSION_COOKIE, Gateway, session_cookie, temporary_dir
from bench.wrk import WrkResult, run_wrk
from gateway.forward_auth import SECRET_HEADER
from tests.components.gateway import ROOT
from tests.components.ports import LOOPBACK, free_port, wait_for_port
from tests.components.process import ChildProcess, require_executable

GOAL_RATIO = 0.4
CACHE_ENV = "CHANNELGATE_SESSIONS__LOCAL_CACHE_SECONDS"
#: ``[server] gil_switch_interval_ms`` of the gateways here: the default (CPython's 5 ms). While the access log's
#: writer was a thread of the gateway, 0.5 doubled the answers per second; with the writer in a process of its own
#: it costs them ~10 % (harness runs: 11,300 req/s at 0.5 ms, 12,800 at 5, with the session cache).
SWITCH_ENV = "CHANNELGATE_SERVER__GIL_SWITCH_INTERVAL_MS"
SWITCH_INTERVAL_MS = 5.0

CONFIG = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream origin {{ server {host}:{upstream}; keepalive 64; }}
{decider_upstreams}
    server {{ listen {host}:{upstream}; location / {{ default_type text/plain; return 200 "ok\\n"; }} }}
    server {{
        listen {host}:{proxy};
        location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
{auth_servers}
}}
"""

AUTH_SERVER = """
    server {{
        listen {host}:{port};
        location = /_auth {{
            internal;
            proxy_pass http://{decider}/.channelgate/auth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Channelgate-Auth-Secret "{secret}";
        }}
        location / {{
            auth_request /_auth;
            auth_request_set $cg_authorization $upstream_http_authorization;
            auth_request_set $cg_assertion $upstream_http_x_channelgate_assertion;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization $cg_authorization;
            proxy_set_header X-Channelgate-Assertion $cg_assertion;
        }}
    }}
"""


@dataclass
class ForwardAuthResult:
    duration: float
    rounds: list[dict[str, WrkResult]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    revocations: list[RevocationTrial] = field(default_factory=list)
    #: Per round, target → process role → CPU microseconds per request (``_CpuWindow``).
    cpu: list[dict[str, dict[str, float]]] = field(default_factory=list)
    #: Logical CPUs of the machine the run shared.
    cpus: int = 1

    def median(self, target: str, attribute: str) -> float:
        return float(statistics.median(getattr(r[target], attribute) for r in self.rounds))

    def ratios(self, target: str) -> list[float]:
        return [r[target].requests_per_second / r["nginx"].requests_per_second for r in self.rounds]


class _Nginx:
    """``deciders``: name → ports of a decision endpoint's processes (one nginx upstream group each); each gets an
    ``auth_request`` server of its own."""

    def __init__(self, work: Path, deciders: dict[str, list[int]], secret: str) -> None:
        self.dir = work
        self.ports = {name: free_port() for name in ("upstream", "nginx", *deciders)}
        auth = "".join(
            AUTH_SERVER.format(host=LOOPBACK, port=self.ports[name], decider=name.replace("-", "_"), secret=secret)
            for name in deciders
        )
        upstreams = "\n".join(
            f"    upstream {name.replace('-', '_')} {{ "
            + "".join(f"server {LOOPBACK}:{port}; " for port in ports)
            + "keepalive 64; }"
            for name, ports in deciders.items()
        )
        conf = work / "nginx.conf"
        conf.write_text(
            CONFIG.format(
                dir=work, host=LOOPBACK, upstream=self.ports["upstream"], proxy=self.ports["nginx"],
                decider_upstreams=upstreams, auth_servers=auth,
            )
        )  # fmt: skip
        self.process = ChildProcess(
            [require_executable("nginx", "nginx"), "-p", str(work), "-c", str(conf), "-e", "stderr"],
            work / "nginx.log",
            name="nginx (forward-auth bench)",
        )

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.ports[name]}/chat/"

    def start(self) -> None:
        self.process.start()
        for port in self.ports.values():
            wait_for_port(LOOPBACK, port, timeout=10)


#: Gateway variants: target name → (label, ``[sessions] local_cache_seconds``, replicas).
VARIANTS: dict[str, tuple[str, float, int]] = {
    "channelgate": (
        "(c) nginx `auth_request` → channelgate, Redis sessions read on every request (a repeated answer written by"
        " the HTTP protocol after the read)",
        0.0,
        1,
    ),
    "channelgate-cached": (
        "(d) the same with `[sessions] local_cache_seconds = 2` (in-process session cache; a repeated answer written"
        " from the HTTP parser's callback)",
        2.0,
        1,
    ),
    "channelgate-cached-2": (
        "(e) (d) with two replicas (two processes, one Redis and one SQLite file) in one nginx upstream group",
        2.0,
        2,
    ),
}


class ForwardAuthBench:
    """The gateways are made first: the OpenID provider must know their redirect URIs before it starts."""

    def __init__(self, redis_url: str, redis_pid: int | None = None) -> None:
        #: The Redis server's process, whose CPU per request the section reports (None: not reported).
        self.redis_pid = redis_pid
        self.work = temporary_dir("channelgate-bench-fa-")
        self.secret = secrets.token_urlsafe(32)
        self.gateways: dict[str, Gateway] = {}
        for name in VARIANTS:
            database = f"sqlite+aiosqlite:///{self.work}/{name}.db"
            gateway = Gateway(name, database, free_port(), redis_url, replicas=VARIANTS[name][2])
            gateway.extra_toml = f'\n[forward_auth]\nenabled = true\nsecret = "{self.secret}"\n'
            self.gateways[name] = gateway

    @property
    def redirect_uris(self) -> list[str]:
        return [uri for gateway in self.gateways.values() for uri in gateway.redirect_uris]

    def run(
        self, *, issuer: str, duration: float, warmup: float, rounds: int, trials: int, first_agent: int = 0
    ) -> ForwardAuthResult:
        return run_forward_auth(
            self, issuer=issuer, duration=duration, warmup=warmup, rounds=rounds, trials=trials,
            first_agent=first_agent,
        )  # fmt: skip


def run_forward_auth(
    bench: ForwardAuthBench,
    *,
    issuer: str,
    duration: float,
    warmup: float,
    rounds: int,
    trials: int,
    first_agent: int = 0,
) -> ForwardAuthResult:
    """Both gateway variants and the trivial endpoint stay up behind one nginx; wrk runs over the targets in
    alternating order per round; then ``trials`` deprovisionings per variant, each of a fresh agent
    ``agentNNN`` (from ``first_agent``) polled through nginx."""
    work, gateways = bench.work, bench.gateways
    answer_file = work / "answer.json"
    answered = ("--answer", str(answer_file))
    references = {
        "trivial": _reference(work, "trivial", "bench.trivial_auth", "trivial decision endpoint"),
        "trivial-copy": _reference(
            work, "trivial-copy", "bench.trivial_auth", "trivial decision endpoint with channelgate's answer", *answered
        ),
        "trivial-log": _reference(
            work, "trivial-log", "bench.trivial_auth",
            "trivial decision endpoint with channelgate's answer and access log",
            *answered, "--log", f"sqlite+aiosqlite:///{work}/trivial-log.db",
        ),
        "raw-log": _reference(
            work, "raw-log", "bench.raw_auth",
            "asyncio-protocol decision endpoint with channelgate's answer and access log",
            *answered, "--log", f"sqlite+aiosqlite:///{work}/raw-log.db",
        ),
    }  # fmt: skip
    trivials = {name: [reference.port] for name, reference in references.items()}
    deciders = {**trivials, **{n: g.ports for n, g in gateways.items()}}
    nginx = _Nginx(work, deciders, bench.secret)
    result = ForwardAuthResult(duration)
    result.labels = {
        "nginx": "(a) nginx `proxy_pass` → upstream (baseline)",
        "trivial": "(b) nginx `auth_request` → trivial Starlette endpoint, then `proxy_pass`",
        "trivial-copy": "(b2) the same trivial endpoint answering a copy of channelgate's answer headers "
        "(credential, assertion, names)",
        "trivial-log": "(b3) (b2) also queuing each answer's access-log record through channelgate's own writer "
        "(the writer process, SQLite WAL, `synchronous=FULL`, chained as inserted), deciding nothing",
        "raw-log": "(b4) (b3) without uvicorn and Starlette: an `asyncio.Protocol` over httptools answers from its "
        "parser callback (bench/raw_auth.py), same answer, same record",
        **{name: label for name, (label, _, _) in VARIANTS.items()},
    }
    try:
        references["trivial"].process.start()
        for name, gateway in gateways.items():
            os.environ[CACHE_ENV] = str(VARIANTS[name][1])
            os.environ[SWITCH_ENV] = str(SWITCH_INTERVAL_MS)
            try:
                gateway.start(issuer)
            finally:
                os.environ.pop(CACHE_ENV, None)
                os.environ.pop(SWITCH_ENV, None)
        headers = {}
        for name, gateway in gateways.items():
            cookie = asyncio.run(session_cookie(gateway, "alice"))
            headers[name] = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        answer_file.write_text(json.dumps(_answer(gateways["channelgate"], bench.secret, headers["channelgate"])))
        for name, reference in references.items():
            if name != "trivial":  # they copy the answer just written
                reference.process.start()
        for reference in references.values():
            wait_for_port(LOOPBACK, reference.port, timeout=30)  # listening once the app and its log started
        nginx.start()
        for name in gateways:
            _check(nginx.url(name), headers[name])
        for name in ("nginx", *trivials):
            headers[name] = headers["channelgate"]
        order = ["nginx", *trivials, *gateways]
        endpoints = {name: [reference.process.pid or 0] for name, reference in references.items()}
        endpoints |= {name: gateway.pids for name, gateway in gateways.items()}
        result.cpus = os.cpu_count() or 1
        for number in range(rounds):
            measured: dict[str, WrkResult] = {}
            cpu: dict[str, dict[str, float]] = {}
            for target in order if number % 2 == 0 else list(reversed(order)):
                if warmup > 0:
                    run_wrk(target, nginx.url(target), duration=warmup, headers=headers[target])
                window = CpuWindow(nginx.process.pid or 0, endpoints.get(target, []), bench.redis_pid)
                window.start()
                m = run_wrk(target, nginx.url(target), duration=duration, headers=headers[target])
                if target in gateways:
                    m = _sustained(m, _drain(gateways[target]))
                elif target in ("trivial-log", "raw-log"):
                    queued = f"http://{LOOPBACK}:{references[target].port}/queued"
                    m = _sustained(m, _drain_queue([queued], target))
                measured[target] = m
                cpu[target] = window.per_request(m.total_requests)
                _log(f"round {number + 1}: {target} {m.requests_per_second:,.0f} req/s p99 {m.p99_ms:.1f} ms "
                     f"non-2xx {m.non_2xx}")  # fmt: skip
            result.rounds.append(measured)
            result.cpu.append(cpu)
        for name, gateway in gateways.items():
            _check(nginx.url(name), headers[name])
            for trial in range(trials):
                username = f"agent{first_agent + trial:03d}"
                result.revocations.append(asyncio.run(revocation_trial(gateway, nginx.url(name), name, username)))
            worst = max(t.refused_after for t in result.revocations if t.variant == name)
            _log(f"{name}: {trials} revocations, worst {worst * 1000:.1f} ms")
    finally:
        nginx.process.stop()
        for gateway in gateways.values():
            gateway.stop()
        for reference in references.values():
            reference.process.stop()
    return result


@dataclass
class _Reference:
    """A reference decision endpoint in a process of its own (bench/trivial_auth.py, bench/raw_auth.py)."""

    process: ChildProcess
    port: int


def _reference(work: Path, target: str, module: str, description: str, *options: str) -> _Reference:
    port = free_port()
    argv = [sys.executable, "-m", module, "--port", str(port), *options]
    return _Reference(ChildProcess(argv, work / f"{target}.log", name=description, cwd=ROOT), port)


def _drain(gateway: Gateway, timeout: float = 120.0) -> float:
    """Seconds until every replica's access-log queue is empty after a run: records still queued were answered
    but not yet written, so a run is only as fast as its records were committed."""
    urls = [f"{gateway.url(replica)}/.channelgate/metrics" for replica in range(len(gateway.ports))]
    return _drain_queue(urls, gateway.label, timeout)


def _drain_queue(urls: list[str], label: str, timeout: float = 120.0) -> float:
    """Seconds until the access-log queues read at ``urls`` (channelgate's metrics, or the trivial endpoint's
    ``/queued``) are empty."""
    import httpx

    start = time.perf_counter()
    while True:
        waiting = 0.0
        for url in urls:
            text = httpx.get(url, timeout=10.0).text
            if url.endswith("/metrics"):
                queued = [line for line in text.splitlines() if line.startswith("channelgate_audit_queue ")]
                waiting += sum(float(line.split()[1]) for line in queued)
            else:
                waiting += float(text)
        if waiting == 0:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{label}: {waiting:.0f} access-log records queued {timeout:g} s after a run")
        time.sleep(0.05)


def _sustained(run: WrkResult, drain: float) -> WrkResult:
    """``run`` with its rate counted until its last access-log record was committed, not just answered."""
    seconds = run.total_requests / run.requests_per_second + drain
    return replace(run, requests_per_second=run.total_requests / seconds, drain_seconds=drain)


#: The answer headers a front proxy copies upstream (the rest — date, server, length — every endpoint sends).
_ANSWER_HEADERS = ("authorization", "x-channelgate-assertion", "x-channelgate-user", "x-channelgate-channel",
                   "x-channelgate-policy", "cache-control")  # fmt: skip


def _answer(gateway: Gateway, secret: str, headers: dict[str, str]) -> list[tuple[str, str]]:
    """One real 200 of channelgate's /.channelgate/auth for /chat/, as [name, value] pairs to copy."""
    import httpx

    response = httpx.get(
        f"{gateway.url(0)}/.channelgate/auth",
        headers={**headers, "X-Original-URI": "/chat/", "X-Original-Method": "GET", SECRET_HEADER: secret},
        timeout=5.0,
    )
    if response.status_code != 200:
        raise RuntimeError(f"/.channelgate/auth answered {response.status_code}, not 200: {response.text[:200]}")
    return [(name, value) for name, value in response.headers.items() if name in _ANSWER_HEADERS]


def _check(url: str, headers: dict[str, str]) -> None:
    """wrk counts a redirect as success: one request by hand must be a real 200."""
    import httpx

    response = httpx.get(url, headers=headers, timeout=5.0)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}, not 200: {response.text[:200]}")


def forward_auth_section(result: ForwardAuthResult) -> list[str]:
    ratios = result.ratios("channelgate")
    median_ratio = statistics.median(ratios)
    verdict = "met" if median_ratio >= GOAL_RATIO else "**missed**"
    lines = [
        "## 8. Forward-auth: nginx `auth_request` → channelgate",
        "",
        f"`wrk -t2 -c50`, {len(result.rounds)} rounds of {result.duration:g} s, targets in alternating order; "
        "one nginx worker for every target; channelgate with Redis sessions, the shipped policies, the chat "
        "channel's bearer credential and the signed assertion in the answer, `[server] gil_switch_interval_ms = "
        f"{SWITCH_INTERVAL_MS:g}`. Source: `bench/forward_auth.py`.",
        "",
        f"**Goal: ≥ {GOAL_RATIO}× nginx `proxy_pass` alone: {verdict} (median of rounds {median_ratio:.2f}×; rounds "
        f"{' / '.join(f'{r:.2f}' for r in ratios)}).**",
        "",
        "A channelgate run counts until its last access-log record was committed, not only answered: the records "
        "still queued when wrk stops are waited for and the wait is added to the run's time (column 'log drained').",
        "",
        "| target | req/s (median) | × proxy_pass | p50 ms | p99 ms | non-2xx | log drained (max) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target, label in result.labels.items():
        rps = result.median(target, "requests_per_second")
        ratio = statistics.median(result.ratios(target))
        non_2xx = sum(r[target].non_2xx for r in result.rounds)
        drains = [d for r in result.rounds if (d := r[target].drain_seconds) is not None]
        drained = f"{max(drains):.2f} s" if drains else "—"
        lines.append(
            f"| {label} | {rps:,.0f} | {ratio:.2f} | {result.median(target, 'p50_ms'):.2f} | "
            f"{result.median(target, 'p99_ms'):.2f} | {non_2xx} | {drained} |"
        )
    if "trivial-log" in result.labels:
        copy = statistics.median(result.ratios("trivial-copy"))
        logged = statistics.median(result.ratios("trivial-log"))
        cached = max(statistics.median(result.ratios(name)) for name in VARIANTS)
        lines += [
            "",
            f"Where the goal sits: an endpoint that decides nothing and only answers channelgate's headers (b2) "
            f"reaches {copy:.2f}× here; the same endpoint also writing each request's access-log record the way "
            f"channelgate does — durable and chained, by the same writer — (b3) reaches {logged:.2f}×, before any "
            f"session, policy, credential or assertion work. channelgate's best setting reaches {cached:.2f}×, "
            f"{cached / logged:.2f} of (b3): the decision costs the difference, the record of every request costs "
            f"{1 - logged / copy:.0%} of (b2)'s rate. On this 2-core machine wrk, nginx, the endpoint and its log "
            "writer share the CPUs, so every microsecond spent is taken from nginx too.",
        ]
    if "raw-log" in result.labels:
        raw = statistics.median(result.ratios("raw-log"))
        logged = statistics.median(result.ratios("trivial-log"))
        lines += [
            "",
            f"What the server costs: the same answer and the same durable, chained record written by an "
            f"`asyncio.Protocol` over the same parser, without uvicorn's per-request task, scope and messages (b4), "
            f"reach {raw:.2f}× against (b3)'s {logged:.2f}×. The record alone does not keep a decision endpoint "
            f"below the goal; uvicorn's plumbing plus the record do.",
        ]
    lines += cpu_section(result, GOAL_RATIO)
    lines += revocation_section(result.revocations, VARIANTS)
    lines.append("")
    return lines


def _log(message: str) -> None:
    print(f"[forward-auth] {message}", file=sys.stderr, flush=True)
