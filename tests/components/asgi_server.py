"""Serving an ASGI app with uvicorn in this test process, on a loopback socket held from the start.

Choosing a free port and binding it later races with every outgoing connection on the machine, which may take
that same ephemeral port in between; holding the socket closes the race.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable

import uvicorn
from starlette.types import ASGIApp

from tests.components.ports import LOOPBACK


def bound_socket(port: int = 0) -> socket.socket:
    """A socket bound to ``port`` of the loopback address (0: one the kernel picks), held from now on."""
    # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it
    # every small response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    return sock


async def start_server(config: uvicorn.Config, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Serve ``config`` on the already bound ``sock`` in this event loop; return once it accepts connections."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.01)
    return server, task


class AsgiServer:
    """``app`` under uvicorn on a held loopback port, as a third-party console would be: ``stop`` makes connections
    to the port be refused (a channel going away mid-test), ``start`` serves the same app (same state) there again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sock = bound_socket()
        self.port: int = self.sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        if self.sock.fileno() == -1:  # closed by an earlier stop: the same port again
            self.sock = bound_socket(self.port)
        config = uvicorn.Config(
            self.app, lifespan="off", log_level="critical", proxy_headers=False, ws="websockets-sansio"
        )
        self._server, self._task = await start_server(config, self.sock)

    async def stop(self) -> None:
        """Stop answering at once (requests in flight are not waited for); a connection to the port is refused."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            await self._task
        self._server = self._task = None
        self.sock.close()


async def stop_all(servers: Iterable[AsgiServer]) -> None:
    """Stop servers side by side: each stop sits through uvicorn's shutdown ticks (~0.2 s) whatever it serves."""
    await asyncio.gather(*(server.stop() for server in servers))


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp) -> AsyncIterator[AsgiServer]:
    """``app`` served on a free loopback port for the block (see :class:`AsgiServer`)."""
    server = AsgiServer(app)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
