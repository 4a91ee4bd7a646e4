"""Run ``wrk --latency`` and read its summary: requests/s, latency percentiles, socket errors, non-2xx."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from tests.components.process import require_executable

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class WrkResult:
    target: str
    requests_per_second: float
    total_requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    #: Responses with a status outside 2xx/3xx (wrk counts 3xx as success: the gateway's 302 to login would
    #: hide there, which is why ``bench.throughput`` checks one response by hand before every run).
    non_2xx: int
    socket_errors: int
    raw: str
    #: Seconds the target still needed after the run to commit the run's access-log records (channelgate only).
    drain_seconds: float | None = None


def parse(target: str, output: str) -> WrkResult:
    percentiles = {int(p): float(v) * _UNIT_MS[unit] for p, v, unit in _PERCENTILE.findall(output)}
    rps, total = _RPS.search(output), _TOTAL.search(output)
    if rps is None or total is None or 50 not in percentiles or 99 not in percentiles:
        raise RuntimeError(f"could not read wrk's output for {target}:\n{output}")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET.search(output)
    return WrkResult(
        target=target,
        requests_per_second=float(rps.group(1)),
        total_requests=int(total.group(1)),
        p50_ms=percentiles[50],
        p90_ms=percentiles.get(90, float("nan")),
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        raw=output,
    )


def run_wrk(
    target: str,
    url: str,
    *,
    threads: int = 2,
    connections: int = 50,
    duration: float = 10.0,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """``wrk -tT -cC -dDs --latency [-H ...] URL``; the timeout is generous so a stall shows as latency."""
    argv = [
        require_executable("wrk", "wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed for {target} ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse(target, done.stdout)
