"""Free loopback ports, and waiting for a server to listen on one."""

from __future__ import annotations

import os
import socket
import time

LOOPBACK = "127.0.0.1"

#: Under pytest-xdist each worker takes its own share of the ports (``make test`` runs two workers): a port one
#: worker was just given and has not bound yet can never be handed to a server of the other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it when binding port 0)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        # Halved first: Linux hands out odd ports for bind(0) and keeps the even ones for connect().
        if port // 2 % _WORKERS == _WORKER:
            return port


def port_is_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts TCP connections; raise :class:`TimeoutError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not port_is_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.1f} s")
        time.sleep(0.02)
