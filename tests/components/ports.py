"""Free loopback ports, and waiting for a server to listen on one."""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"

#: Under pytest-xdist each worker takes its own share of the ports (``make test`` runs two workers): a port one
#: worker was just given and has not bound yet can never be handed to a server of the other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)

#: The lowest port handed out; below the kernel's ephemeral range there must be at least this many more.
_FIRST_PORT = 10000
_LEAST_PORTS = 2000


def _kernels_first_ephemeral_port() -> int | None:
    """Where Linux starts choosing ports for ``connect()`` and ``bind(port 0)`` (ip-sysctl: ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _candidates() -> tuple[Iterator[int], int]:
    """This worker's share of the ports below the ephemeral range, round and round from a random place.

    A port the kernel chose with ``bind(0)`` was free only until we closed it: any outgoing connection and any
    server binding port 0 (this worker's or the other's) could take it before our server binds it, and a node or
    Redis that finds its port taken exits with EADDRINUSE. The kernel never picks a port below the ephemeral
    range on its own, so there only what we start ourselves binds, and each worker hands out its own share once a
    round.
    """
    first_ephemeral = _kernels_first_ephemeral_port()
    if first_ephemeral is None or first_ephemeral - _FIRST_PORT < _LEAST_PORTS:
        return iter(()), 0
    share = [port for port in range(_FIRST_PORT, first_ephemeral) if port % _WORKERS == _WORKER]
    # A random start: servers of an earlier run may still be exiting on the first ports.
    start = random.randrange(len(share))
    return itertools.cycle(share[start:] + share[:start]), len(share)


_PORTS, _SHARE = _candidates()


def _is_free(port: int) -> bool:
    """Nothing holds ``port`` on the loopback address (no SO_REUSEADDR: a connection in TIME_WAIT counts too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free and that nothing but a server of this suite will bind.

    Below the kernel's ephemeral range when it leaves room (see :func:`_candidates`); else one the kernel picks
    when binding port 0, which another connection may take before the caller binds it.
    """
    for port in itertools.islice(_PORTS, _SHARE):  # one round at most
        if _is_free(port):
            return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
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
