"""A real Redis server (Debian ``redis-server``) in the foreground on a free port, without persistence unless asked."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess, require_executable


def ping(host: str, port: int) -> bool:
    """Send a RESP ``PING``; true when the server answers ``+PONG`` (it is loaded and accepts commands)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway ``redis-server`` child process.

    ``restart()`` keeps the port, and ``kill()`` is a SIGKILL, so fault tests can cut Redis under a running
    gateway and bring it back at the same URL. Nothing is persisted unless ``appendonly`` (as operators run it:
    ``appendonly yes``, ``appendfsync everysec``), in which case a restart, even after a SIGKILL, reloads every
    write Redis acknowledged (each is in the kernel's page cache before the reply).
    """

    def __init__(self, port: int | None = None, *, startup_timeout: float = 10.0, appendonly: bool = False) -> None:
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="channelgate-redis-"))
        binary = require_executable("redis-server", "redis-server")
        argv = [
            binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--dir", str(self._dir),
            "--logfile", "",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = ChildProcess(argv, self._dir / "redis.log", name=f"redis-server :{self.port}")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process.running

    def flushall(self) -> None:
        """Empty every database (RESP ``FLUSHALL``), so tests sharing the server start clean."""
        with socket.create_connection((LOOPBACK, self.port), timeout=5.0) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self._process.start()
        self._process.wait_until(lambda: ping(LOOPBACK, self.port), timeout=self.startup_timeout, what="PONG")

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM); idempotent."""
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        self._process.kill()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port: empty, or as its append-only file left it."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
