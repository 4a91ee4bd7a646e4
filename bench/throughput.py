"""Inline proxy throughput: the same nginx upstream and the same wrk load through four proxies.

(a) nginx ``proxy_pass`` — the reference a C proxy sets; (b) ``bench.bare_proxy`` — the gateway's own stack with
no auth, the baseline the gateway's goal is stated against; (c) channelgate with a logged-in session, memory
session store, SQLite; (d) the same with the Redis session store. The upstream itself (nginx ``return 200``) is
measured too, so every figure can be read against what the machine does with no proxy at all.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from dataclasses import dataclass, field

from bench.nginx import Nginx
from bench.stack import SESSION_COOKIE, Gateway, check_one_request, session_cookie
from bench.wrk import WrkResult, run_wrk
from tests.components.gateway import ROOT
from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess

TARGETS = {
    "upstream": "nginx `return 200` (the upstream, no proxy)",
    "nginx": "(a) nginx `proxy_pass` → upstream",
    "bare": "(b) bare Python proxy (uvicorn + Starlette + aiohttp, no auth)",
    "memory": "(c) channelgate, memory sessions, SQLite",
    "redis": "(d) channelgate, Redis sessions, SQLite",
    "bare-stream": "(b2) bare Python proxy, 256 KiB body (streamed)",
    "memory-stream": "(c2) channelgate, memory sessions, 256 KiB body (streamed)",
}

#: The baseline each target's ratio is taken against: streamed bodies against the streamed bare proxy.
BASELINES = {"bare-stream": "bare-stream", "memory-stream": "bare-stream"}


@dataclass
class ThroughputResult:
    threads: int
    connections: int
    duration: float
    rounds: list[dict[str, WrkResult]] = field(default_factory=list)

    def median(self, target: str, attribute: str) -> float:
        return float(statistics.median(getattr(run[target], attribute) for run in self.rounds))

    def ratio(self, target: str, baseline: str | None = None) -> list[float]:
        """Per round, req/s of ``target`` over req/s of its baseline measured in the same round."""
        baseline = baseline or BASELINES.get(target, "bare")
        return [run[target].requests_per_second / run[baseline].requests_per_second for run in self.rounds]


def _log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


def run_throughput(
    *,
    nginx: Nginx,
    issuer: str,
    memory_gateway: Gateway,
    redis_gateway: Gateway,
    duration: float,
    warmup: float,
    rounds: int,
    threads: int = 2,
    connections: int = 50,
) -> ThroughputResult:
    """Start the bare proxy and both gateways, log one agent into each, then run wrk ``rounds`` times over all
    five targets in the same order (so a round's figures share the machine's state)."""
    bare_port = free_port()
    bare = ChildProcess(
        [sys.executable, "-m", "bench.bare_proxy", "--port", str(bare_port), "--upstream", nginx.upstream_url],
        memory_gateway.base_dir / "bare-proxy.log",
        name="bare proxy",
        cwd=ROOT,
    )
    result = ThroughputResult(threads, connections, duration)
    try:
        bare.start()
        urls = {
            "upstream": nginx.upstream_url + "/chat/",
            "nginx": nginx.proxy_url + "/chat/",
            "bare": f"http://{LOOPBACK}:{bare_port}/chat/",
        }
        cookies: dict[str, str | None] = dict.fromkeys(urls)
        for label, gateway in (("memory", memory_gateway), ("redis", redis_gateway)):
            _log(f"starting gateway {label}")
            gateway.start(issuer)
            cookies[label] = asyncio.run(session_cookie(gateway, "alice"))
            urls[label] = gateway.url(0) + "/chat/"
        urls["bare-stream"] = urls["bare"] + "big/blob.bin"
        urls["memory-stream"] = urls["memory"] + "big/blob.bin"
        cookies["bare-stream"] = None
        cookies["memory-stream"] = cookies["memory"]
        bare.wait_until(lambda: _answers(urls["bare"]), timeout=20, what="HTTP")
        for target, url in urls.items():
            check_one_request(url, cookies[target])
        for number in range(rounds):
            measured: dict[str, WrkResult] = {}
            # Odd rounds run the targets in reverse, so a drift in the machine's speed during a round (this is a
            # shared 2-core VM: the same server's req/s moves by ±25 % from minute to minute) favours neither
            # side of a ratio across rounds.
            order = list(urls.items()) if number % 2 == 0 else list(reversed(urls.items()))
            for target, url in order:
                headers = {"Cookie": f"{SESSION_COOKIE}={cookies[target]}"} if cookies[target] else None
                if warmup > 0:
                    run_wrk(target, url, threads=threads, connections=connections, duration=warmup, headers=headers)
                _log(f"round {number + 1}/{rounds}: {target} for {duration:g} s")
                measured[target] = run_wrk(
                    target, url, threads=threads, connections=connections, duration=duration, headers=headers
                )
                _log(
                    f"  {measured[target].requests_per_second:,.0f} req/s, p50 {measured[target].p50_ms:.2f} ms, "
                    f"p99 {measured[target].p99_ms:.2f} ms, non-2xx {measured[target].non_2xx}"
                )
            result.rounds.append(measured)
        # The session must still be valid after the load: a refusal midway would show as non-2xx, but check.
        for target in ("memory", "redis"):
            check_one_request(urls[target], cookies[target])
    finally:
        bare.stop()
        for gateway in (memory_gateway, redis_gateway):
            gateway.stop()
    return result


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False
