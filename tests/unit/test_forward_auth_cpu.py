"""The forward-auth benchmark's CPU accounting (bench/forward_auth.py): who used the CPU, against the goal's budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from bench.forward_auth import GOAL_RATIO, ForwardAuthResult
from bench.forward_auth_cpu import CPU_ROLES, CpuWindow, cpu_section
from bench.wrk import WrkResult

#: A log writer: spins 0.6 s of CPU, says so, then waits.
SPINNING_CHILD = (
    "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    "print('spun', flush=True)\ntime.sleep(60)"
)
#: An endpoint: starts its writer (which shares its stdout), spins 0.3 s of CPU, prints the writer's pid, waits.
SPINNING_PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {SPINNING_CHILD!r}])
end = time.process_time() + 0.3
while time.process_time() < end: pass
print(child.pid, flush=True)
time.sleep(60)
"""


def _run(target: str, rps: float) -> WrkResult:
    return WrkResult(target, rps, int(rps * 8), 1.0, 2.0, 3.0, 0, 0, "")


def test_the_budget_is_the_machines_cpus_over_the_goals_rate_and_each_target_is_measured_against_it() -> None:
    result = ForwardAuthResult(8.0, cpus=2)
    result.labels = {"nginx": "(a) baseline", "channelgate": "(c) channelgate"}
    result.rounds = [{"nginx": _run("nginx", 62_500), "channelgate": _run("channelgate", 7_000)}]
    costs = {"wrk": 10.0, "nginx": 40.0, "endpoint": 100.0, "log writer": 30.0, "redis": 12.0}
    result.cpu = [{"nginx": dict.fromkeys(CPU_ROLES, 0.0) | {"wrk": 6.0, "nginx": 16.0}, "channelgate": costs}]

    text = "\n".join(cpu_section(result, GOAL_RATIO))

    # 0.4 × 62,500 = 25,000 req/s; 2 CPUs → 80 µs a request for every process together.
    assert "25,000 req/s" in text and "**80 µs" in text
    assert "| (a) | 6.0 | 16.0 | — | — | 0.0 | 22.0 | 0.28 |" in text
    assert "| (c) | 10.0 | 40.0 | 100.0 | 30.0 | 12.0 | 192.0 | 2.40 |" in text
    assert "took 92 µs a request at (c)'s rate, of the 80 µs the goal allows for everything: 12 µs over it" in text


def test_a_window_counts_the_endpoints_own_cpu_apart_from_its_child_writer() -> None:
    with subprocess.Popen([sys.executable, "-c", SPINNING_PARENT], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child = 0
        try:
            window = CpuWindow(nginx=parent.pid, endpoint=[parent.pid], redis=None)
            window.start()
            lines = {parent.stdout.readline().strip(), parent.stdout.readline().strip()}  # both have spun
            child = int(next(line for line in lines if line != "spun"))
            used = window.per_request(1_000)
        finally:
            if child:
                os.kill(child, signal.SIGKILL)
            parent.kill()
    # Per request of 1,000: 0.3 s of the parent's own → ~300 µs; 0.6 s of its child's → ~600 µs (start-up adds a
    # little to each; the window opened after the parent started, so part of its start-up is not counted).
    assert 250 <= used["endpoint"] <= 450
    assert 550 <= used["log writer"] <= 800
    assert used["redis"] == 0.0
