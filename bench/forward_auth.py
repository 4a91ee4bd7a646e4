"""nginx ``auth_request`` → channelgate's /.channelgate/auth versus nginx ``proxy_pass`` alone, same run, same load.

One nginx (one worker, like the single-process Python servers) serves four things: the upstream (``return 200``),
``proxy_pass`` to it (the baseline), ``auth_request`` to channelgate then ``proxy_pass`` (Redis sessions, the
shipped policies, the channel credential and the signed assertion set upstream), and ``auth_request`` to a
trivial Starlette endpoint (bench/trivial_auth.py: what a Python decision costs before it decides anything).
Every gateway variant is started in turn with its own ``[sessions]`` setting; the load is ``wrk -t2 -c50`` with
a logged-in agent's cookie.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.stack import SESSION_COOKIE, Gateway, session_cookie
from bench.wrk import WrkResult, run_wrk
from tests.components.gateway import ROOT
from tests.components.ports import LOOPBACK, free_port, wait_for_port
from tests.components.process import ChildProcess, require_executable

GOAL_RATIO = 0.4

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
    upstream channelgate {{ server {host}:{gateway}; keepalive 64; }}
    upstream trivial {{ server {host}:{trivial}; keepalive 64; }}
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

    def median(self, target: str, attribute: str) -> float:
        return float(statistics.median(getattr(r[target], attribute) for r in self.rounds))

    def ratios(self, target: str) -> list[float]:
        return [r[target].requests_per_second / r["nginx"].requests_per_second for r in self.rounds]


class _Nginx:
    def __init__(self, work: Path, gateway_port: int, trivial_port: int, secret: str) -> None:
        self.dir = work
        self.ports = {name: free_port() for name in ("upstream", "nginx", "channelgate", "trivial")}
        auth = "".join(
            AUTH_SERVER.format(host=LOOPBACK, port=self.ports[name], decider=name, secret=secret)
            for name in ("channelgate", "trivial")
        )
        conf = work / "nginx.conf"
        conf.write_text(
            CONFIG.format(
                dir=work, host=LOOPBACK, upstream=self.ports["upstream"], proxy=self.ports["nginx"],
                gateway=gateway_port, trivial=trivial_port, auth_servers=auth,
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


#: Gateway variants: label → (description, extra [sessions] TOML is not possible: a table is set once).
VARIANTS: dict[str, str] = {
    "channelgate": "(c) nginx `auth_request` → channelgate (Redis sessions, read on every request)",
}


def run_forward_auth(
    *, issuer: str, redis_url: str, duration: float, warmup: float, rounds: int, variants: dict[str, str] | None = None
) -> ForwardAuthResult:
    work = Path(tempfile.mkdtemp(prefix="channelgate-bench-fa-"))
    secret = secrets.token_urlsafe(32)
    gateway_port, trivial_port = free_port(), free_port()
    gateway = Gateway("forward-auth", f"sqlite+aiosqlite:///{work}/fa.db", free_port(), redis_url)
    gateway.ports = [gateway_port]
    gateway.extra_toml = f'\n[forward_auth]\nenabled = true\nsecret = "{secret}"\n'
    trivial = ChildProcess(
        [sys.executable, "-m", "bench.trivial_auth", "--port", str(trivial_port)],
        work / "trivial.log",
        name="trivial decision endpoint",
        cwd=ROOT,
    )
    nginx = _Nginx(work, gateway_port, trivial_port, secret)
    result = ForwardAuthResult(duration)
    result.labels = {
        "nginx": "(a) nginx `proxy_pass` → upstream (baseline)",
        "trivial": "(b) nginx `auth_request` → trivial Starlette endpoint, then `proxy_pass`",
        **(variants or VARIANTS),
    }
    try:
        trivial.start()
        gateway.start(issuer)
        nginx.start()
        cookie = asyncio.run(session_cookie(gateway, "alice"))
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        _check(nginx.url("channelgate"), headers)
        for number in range(rounds):
            measured: dict[str, WrkResult] = {}
            order = ["nginx", "trivial", "channelgate"]
            for target in order if number % 2 == 0 else list(reversed(order)):
                if warmup > 0:
                    run_wrk(target, nginx.url(target), duration=warmup, headers=headers)
                measured[target] = run_wrk(target, nginx.url(target), duration=duration, headers=headers)
                m = measured[target]
                _log(f"round {number + 1}: {target} {m.requests_per_second:,.0f} req/s p99 {m.p99_ms:.1f} ms "
                     f"non-2xx {m.non_2xx}")  # fmt: skip
            result.rounds.append(measured)
        _check(nginx.url("channelgate"), headers)
    finally:
        nginx.process.stop()
        gateway.stop()
        trivial.stop()
    return result


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
        "channel's bearer credential and the signed assertion in the answer. Source: `bench/forward_auth.py`.",
        "",
        f"**Goal: ≥ {GOAL_RATIO}× nginx `proxy_pass` alone: {verdict} (median of rounds {median_ratio:.2f}×; rounds "
        f"{' / '.join(f'{r:.2f}' for r in ratios)}).**",
        "",
        "| target | req/s (median) | × proxy_pass | p50 ms | p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for target, label in result.labels.items():
        rps = result.median(target, "requests_per_second")
        ratio = statistics.median(result.ratios(target))
        non_2xx = sum(r[target].non_2xx for r in result.rounds)
        lines.append(
            f"| {label} | {rps:,.0f} | {ratio:.2f} | {result.median(target, 'p50_ms'):.2f} | "
            f"{result.median(target, 'p99_ms'):.2f} | {non_2xx} |"
        )
    lines.append("")
    return lines


def _log(message: str) -> None:
    print(f"[forward-auth] {message}", file=sys.stderr, flush=True)
