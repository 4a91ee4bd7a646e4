"""What processes cost while a benchmark runs, read from /proc: resident memory, CPU time, the machine's load.

Linux only (like every server the benchmarks start). CPU time is user + system of a process and, for a server
that forks (PostgreSQL), of every descendant alive at the moment of reading.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field_name}")


def rss_kib(pid: int) -> int:
    """Resident set size now (``VmRSS``)."""
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """The largest resident set size the process ever had (``VmHWM``)."""
    return _status_kib(pid, "VmHWM")


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (``utime`` + ``stime``, fields 14 and 15 of /proc/PID/stat)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its descendants, live (``utime`` + ``stime``) or ended and reaped (their time
    moves to the parent's ``cutime`` + ``cstime``): a PostgreSQL cluster's backends come and go."""
    total = 0.0
    for member in descendants(pid):
        try:
            fields = _stat(member)
        except OSError:
            continue  # ended between the listing and the read
        total += sum(int(value) for value in fields[11:15]) / _TICK
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already counted in user
    return (total - idle) / _TICK, total / _TICK


@dataclass
class CpuWindow:
    """CPU seconds used by named process trees, and by the whole machine, between ``start`` and ``stop``."""

    roots: dict[str, int]
    used: dict[str, float] = field(default_factory=dict)
    machine_busy_fraction: float = 0.0
    wall_seconds: float = 0.0
    _before: dict[str, float] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._before = {name: tree_cpu_seconds(pid) for name, pid in self.roots.items()}
        self._machine = machine_busy()

    def stop(self) -> None:
        self.used = {name: tree_cpu_seconds(pid) - self._before[name] for name, pid in self.roots.items()}
        busy, total = machine_busy()
        elapsed_cpu = total - self._machine[1]
        self.machine_busy_fraction = (busy - self._machine[0]) / elapsed_cpu if elapsed_cpu > 0 else 0.0
        self.wall_seconds = elapsed_cpu / (os.cpu_count() or 1)


class RssSampler:
    """Samples the resident memory of some processes every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kib: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    self.peak_kib[name] = max(self.peak_kib[name], rss_kib(pid))
                except OSError:
                    continue
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
