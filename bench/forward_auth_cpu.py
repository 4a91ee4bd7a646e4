"""Where the CPU goes in the forward-auth benchmark (bench/forward_auth.py §8): each process's CPU time per request,
read from /proc around each measured run, and the table that sets it against what the goal's rate leaves."""

from __future__ import annotations

import resource
import statistics
from typing import TYPE_CHECKING

from bench.procstat import cpu_seconds, tree_cpu_seconds

if TYPE_CHECKING:
    from bench.forward_auth import ForwardAuthResult

#: The CPU table's process roles, in its column order: the load generator, nginx (master and worker), the decision
#: endpoint's own process(es), its access-log writer (a child process of each), and the Redis server.
CPU_ROLES = ("wrk", "nginx", "endpoint", "log writer", "redis")


class CpuWindow:
    """CPU time each process role used between ``start`` and ``stop``, per request of the run.

    Read from /proc; wrk's from this process's reaped children (``RUSAGE_CHILDREN``): each measured wrk starts and
    ends inside the window, and nothing else this process started ends there. The window closes after the run's
    access-log records were drained, so the writer's work for them is counted."""

    def __init__(self, nginx: int, endpoint: list[int], redis: int | None) -> None:
        self._nginx, self._endpoint, self._redis = nginx, endpoint, redis
        self._before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = sum(cpu_seconds(pid) for pid in self._endpoint)
        tree = sum(tree_cpu_seconds(pid) for pid in self._endpoint)
        return {
            "wrk": reaped.ru_utime + reaped.ru_stime,
            "nginx": tree_cpu_seconds(self._nginx),
            "endpoint": own,
            "log writer": tree - own,
            "redis": cpu_seconds(self._redis) if self._redis is not None else 0.0,
        }

    def start(self) -> None:
        self._before = self._read()

    def per_request(self, requests: int) -> dict[str, float]:
        """Microseconds of CPU per request, by role, since ``start``."""
        after = self._read()
        return {role: (after[role] - self._before[role]) * 1e6 / max(requests, 1) for role in CPU_ROLES}


def cpu_section(result: ForwardAuthResult, goal_ratio: float) -> list[str]:
    """Where each target's CPU went, per request, against what the goal's rate leaves per request."""
    if not result.cpu:
        return []

    def median(target: str, role: str) -> float:
        return float(statistics.median(r[target][role] for r in result.cpu))

    goal_rate = goal_ratio * result.median("nginx", "requests_per_second")
    budget = result.cpus * 1e6 / goal_rate
    lines = [
        "",
        "### Where the CPU goes",
        "",
        "CPU time per request of each process, microseconds (user + system, read from /proc around each measured "
        "run and its log drain; wrk's from the benchmark's own reaped children), median of rounds. The access-log "
        "writer is a child process of channelgate and of (b3)/(b4). At the goal's rate in this run "
        f"({goal_ratio} × (a) = {goal_rate:,.0f} req/s) the machine's {result.cpus} CPUs allow **{budget:.0f} µs "
        "per request for all of them together**; a target that needs more cannot reach the goal here, whatever "
        "else waits.",
        "",
        "| target | wrk | nginx | decision endpoint | its log writer | Redis | all | all ÷ budget at the goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target, label in result.labels.items():
        values = [median(target, role) for role in CPU_ROLES]
        total = sum(values)
        cells = " | ".join("—" if value < 0.05 and role in ("endpoint", "log writer") else f"{value:.1f}"
                           for role, value in zip(CPU_ROLES, values, strict=True))  # fmt: skip
        lines.append(f"| {label.split(' ', 1)[0]} | {cells} | {total:.1f} | {total / budget:.2f} |")
    if "channelgate" in result.labels:
        around = ("wrk", "nginx", "log writer")
        others = sum(median("channelgate", role) for role in (*around, "redis"))
        own = median("channelgate", "endpoint")
        left = budget - others
        room = (
            f"leaving {left:.0f} µs for channelgate's own process"
            if left > 0
            else f"{-left:.0f} µs over it before channelgate's own process"
        )
        lines += [
            "",
            f"For (c), the goal's line: wrk, nginx (two proxied requests per request), the durable record's writer "
            f"and Redis took {others:.0f} µs a request at (c)'s rate, of the {budget:.0f} µs the goal allows for "
            f"everything: {room}, which used {own:.0f} µs (HTTP, session lookup, policy, credential, assertion, the "
            "record's submission).",
        ]
        if "raw-log" in result.labels:
            # At a higher rate nginx, wrk and the writer batch more and cost less a request: (b4) shows that floor.
            floor = sum(median("raw-log", role) for role in around) + median("channelgate", "redis")
            lines[-1] += (
                f" At (b4)'s higher rate the same processes cost less a request (they batch more): with (b4)'s "
                f"wrk, nginx and writer and (c)'s Redis, {floor:.0f} µs, leaving {budget - floor:.0f} µs for the "
                f"decision endpoint, where (b4)'s, which reads no session and decides nothing, used "
                f"{median('raw-log', 'endpoint'):.0f} µs."
            )
    return lines
