"""What the figures were measured on: the numbers mean little without the machine and the versions."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not found"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def event_loop() -> str:
    """The loop ``uvicorn.run(loop="auto")`` picks: uvloop when it imports, else asyncio's."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio (uvloop not installed)"
    return f"uvloop {metadata.version('uvloop')} (uvicorn loop=auto)"


def http_parser() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return f"httptools {metadata.version('httptools')} (uvicorn http=auto)"


def describe() -> dict[str, str]:
    packages = ("uvicorn", "starlette", "aiohttp", "redis", "sqlalchemy", "aiosqlite", "asyncpg")
    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} logical CPUs (nproc)",
        "Kernel": platform.platform(),
        "Python": sys.version.split()[0],
        "Event loop": event_loop(),
        "HTTP parser": http_parser(),
        "Packages": ", ".join(f"{name} {metadata.version(name)}" for name in packages),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "Redis": _first_line(["redis-server", "--version"]),
        "PostgreSQL": _first_line(["/usr/lib/postgresql/15/bin/postgres", "--version"]),
    }
