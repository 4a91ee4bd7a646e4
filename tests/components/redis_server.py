"""A real Redis server (Debian ``redis-server``) in the foreground on a free port, without persistence unless asked."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from redis.asyncio import Redis

from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess, Lifecycle, ServerProcess, require_executable


def ping(host: str, port: int) -> bool:
    """Send a RESP ``PING``; true when the server answers ``+PONG`` (it is loaded and accepts commands)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


async def until_replicated(primary_url: str, timeout: float = 10.0) -> None:
    """Until a replica acknowledges writes on the primary at ``primary_url``: a probe write's ``WAIT`` answers 1.
    A replica the primary calls online acknowledges nothing until it has loaded the first synchronisation (~1 s
    here), so "online" is not enough for a test of ``wait_for_replicas``."""
    deadline = time.monotonic() + timeout
    async with Redis.from_url(primary_url, decode_responses=True) as primary:
        while True:
            await primary.set("probe", "1")
            if await primary.wait(1, 100) >= 1:
                await primary.delete("probe")
                return
            assert time.monotonic() < deadline, "the Redis replica never acknowledged a write"


class RedisServer(ServerProcess, Lifecycle):
    """A throwaway ``redis-server`` child process.

    ``restart()`` keeps the port, and ``kill()`` is a SIGKILL, so fault tests can cut Redis under a running
    gateway and bring it back at the same URL. Nothing is persisted unless ``appendonly`` (as operators run it:
    ``appendonly yes``, ``appendfsync everysec``), in which case a restart, even after a SIGKILL, reloads every
    write Redis acknowledged (each is in the kernel's page cache before the reply).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 10.0,
        appendonly: bool = False,
        replica_of: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """``replica_of``: the port of a primary on loopback this server replicates; ``config``: more redis.conf
        directives, e.g. ``{"maxmemory": "100mb", "maxmemory-policy": "allkeys-lru"}``."""
        self.port = port if port is not None else free_port()
        directory = Path(tempfile.mkdtemp(prefix="channelgate-redis-"))
        binary = require_executable("redis-server", "redis-server")
        argv = [
            binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--dir", str(directory),
            "--logfile", "",
            "--loglevel", "warning",
            # No wait for more replicas before a full synchronisation (Redis 7's diskless-sync delay is 5 s).
            "--repl-diskless-sync-delay", "0",
            *(("--replicaof", LOOPBACK, str(replica_of)) if replica_of is not None else ()),
            *(argument for name, value in (config or {}).items() for argument in (f"--{name}", value)),
        ]  # fmt: skip
        process = ChildProcess(argv, directory / "redis.log", name=f"redis-server :{self.port}")
        super().__init__(process, directory, startup_timeout=startup_timeout)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def flushall(self) -> None:
        """Empty every database (RESP ``FLUSHALL``), so tests sharing the server start clean."""
        with socket.create_connection((LOOPBACK, self.port), timeout=5.0) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self._start_and_wait(lambda: ping(LOOPBACK, self.port), what="PONG")
