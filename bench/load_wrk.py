"""wrk with bench/load_wrk.lua: many agents' cookies in turn over the three consoles, every request logged.

The Lua script writes, per request, the agent, a unique sequence id and the send time (CLOCK_MONOTONIC, µs) to
one file per wrk thread, and tags the request's query with the same three values, which the upstream logs when
it serves the request (bench/load_nginx.py). Comparing the two logs tells, per request, whether it was served.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.wrk import WrkResult, parse
from tests.components.process import require_executable

SCRIPT = Path(__file__).with_name("load_wrk.lua")
_STATUS = re.compile(r"^cg-status (\d+) (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Tagged:
    """One tagged request: the agent it was sent for, its unique id, its send time (monotonic seconds)."""

    agent: str
    seq: str
    sent: float


def write_agents(path: Path, cookies: dict[str, str]) -> Path:
    path.write_text("".join(f"{agent} {cookie}\n" for agent, cookie in cookies.items()), encoding="utf-8")
    return path


def read_tagged(lines: Iterable[str]) -> Iterator[Tagged]:
    """``agent seq sent_us`` lines (the send logs and the upstream's served.log) as ``Tagged`` records."""
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            yield Tagged(parts[0], parts[1], int(parts[2]) / 1e6)


@dataclass(frozen=True)
class WrkLoadResult:
    name: str
    summary: WrkResult
    #: HTTP status → responses, as the script counted them.
    statuses: dict[int, int]


async def run_wrk_load(
    name: str,
    url: str,
    agents_file: Path,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    log_dir: Path | None = None,
    tag: bool = True,
    mean_delay_ms: float = 0.0,
) -> WrkLoadResult:
    """Run wrk to completion (in the background of the caller's event loop) and read its results."""
    argv = [
        require_executable("wrk", "wrk"), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", "10s", "--latency", "-s", str(SCRIPT), url,
        "--", str(agents_file), str(log_dir) if log_dir else "-", name, "1" if tag else "0",
    ]  # fmt: skip
    env = dict(os.environ, CG_WRK_DELAY_MS=str(round(mean_delay_ms)))
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), duration + 60)
    text = out.decode()
    if process.returncode != 0:
        raise RuntimeError(f"wrk {name} failed ({process.returncode}):\n{text}\n{err.decode()}")
    statuses = {int(code): int(count) for code, count in _STATUS.findall(text)}
    return WrkLoadResult(name, parse(name, text), statuses)
