"""A CPU limit for a running process, as a Kubernetes ``resources.limits.cpu`` or systemd's ``CPUQuota=`` sets it.

The scaling benchmark (bench/scaling.py) runs the load generator, nginx, Redis and PostgreSQL on the same two CPUs
as the replicas it measures: uncapped, two replicas can only take what those leave them, which bounds the ratio
before the gateway does. With each replica held to a share of a CPU (the kernel's CFS bandwidth control, the
mechanism behind both of those settings), one replica and two get the same CPU each, the machine has CPU to spare
for the rest, and the ratio says whether a second replica adds what the first one brings.

cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``), as root; :func:`available` says whether this machine
allows it, so a run without it reports the capped rounds as not measured rather than failing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def _v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def _base() -> Path:
    return ROOT if _v2() else ROOT / "cpu"


def available() -> bool:
    """Root, and a cpu controller this process may make groups in."""
    if os.geteuid() != 0:
        return False
    if _v2():
        return "cpu" in (ROOT / "cgroup.controllers").read_text().split()
    return (ROOT / "cpu" / "cpu.cfs_quota_us").exists()


class CpuCap:
    """One cgroup limited to ``cpus`` CPUs; processes added move in with all their threads."""

    def __init__(self, name: str, cpus: float) -> None:
        if cpus <= 0:
            raise ValueError("a CPU cap must be more than 0 CPUs")
        self.cpus = cpus
        self.path = _base() / name
        self._pids: list[int] = []

    def __enter__(self) -> CpuCap:
        self.path.mkdir(exist_ok=True)
        quota = max(1000, round(self.cpus * PERIOD_US))
        if _v2():
            subtree = ROOT / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))
        self._pids.append(pid)

    def __exit__(self, *_: object) -> None:
        for pid in self._pids:
            with contextlib.suppress(OSError):  # the process is gone
                (_base() / "cgroup.procs").write_text(str(pid))
        self._pids.clear()
        try:
            self.path.rmdir()
        except OSError as exc:
            print(f"[cpu-cap] could not remove {self.path}: {exc}", file=sys.stderr, flush=True)
