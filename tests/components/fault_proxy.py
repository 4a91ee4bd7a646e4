"""A fault-injecting TCP proxy (toxiproxy is not available here): listen on a loopback port, forward to a target.

Faults are switched at runtime and apply at once, to new and to already open connections:

    latency     every chunk waits ``latency`` seconds before it is forwarded (both directions)
    "reset"     the next chunk from the client resets both sides (RST: ``SO_LINGER`` 0, then abort); a connection
                made meanwhile is reset on its first bytes too
    "blackhole" connections are accepted and read, nothing is forwarded either way (no connection to the target)
    "refuse"    the listening socket is closed: connecting fails with ECONNREFUSED; open connections carry on

``cut_after`` (bytes): the next chunk from a client that contains them is forwarded, then that connection is reset
before any answer reaches the client — a server that acted on a request (a COMMIT) whose answer was lost.

``reset_all()`` resets every open connection now. ``open_connections`` counts the client connections the proxy
holds, so a test can prove the client behind it does not leak them. Runs in the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from tests.components.ports import LOOPBACK, free_port

Mode = Literal["forward", "reset", "blackhole", "refuse"]
CHUNK = 65536


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with an RST instead of a FIN (``SO_LINGER`` on, timeout 0)."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    #: Cut (``FaultProxy.cut_after``): what the target sends is dropped until the reset.
    muted: bool = False

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()


@dataclass
class FaultCounts:
    """What the proxy did so far (tests check a fault really happened)."""

    accepted: int = 0
    forwarded_bytes: int = 0
    resets: int = 0
    blackholed: int = 0
    target_unreachable: int = 0
    cuts: int = 0


@dataclass
class FaultProxy:
    target_port: int
    target_host: str = LOOPBACK
    port: int = field(default_factory=free_port)
    latency: float = 0.0
    mode: Mode = "forward"
    #: One cut after these bytes from a client (see the module's docstring), then None again.
    cut_after: bytes | None = None
    #: How long the target gets to act on the chunk before the cut.
    cut_delay: float = 0.3
    counts: FaultCounts = field(default_factory=FaultCounts)
    _server: asyncio.Server | None = field(default=None, repr=False)
    _open: set[_Connection] = field(default_factory=set, repr=False)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections the proxy holds right now."""
        return len(self._open)

    async def start(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        """Stop listening, reset every connection and end their handlers (one may be sleeping out a latency)."""
        await self._unlisten()
        await self.reset_all()
        handlers = set(self._handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def set_mode(self, mode: Mode) -> None:
        """Switch the fault; "refuse" closes the listening socket, any other mode listens again."""
        self.mode = mode
        if mode == "refuse":
            await self._unlisten()
        else:
            await self._listen()

    async def clear(self) -> None:
        """No fault: forward everything at once."""
        self.latency = 0.0
        await self.set_mode("forward")

    async def reset_all(self) -> None:
        """RST every open connection now (both the client's and the target's side)."""
        for connection in list(self._open):
            connection.reset()
            self.counts.resets += 1
        await asyncio.sleep(0)

    async def wait_until_idle(self, timeout: float = 5.0) -> int:
        """Wait until no connection is open (or ``timeout`` passed); return how many are still open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._open and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return len(self._open)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port, reuse_address=True)

    async def _unlisten(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        connection = _Connection(writer)
        self._open.add(connection)
        self.counts.accepted += 1
        try:
            await self._serve(connection, reader)
        except asyncio.CancelledError:
            pass  # stop() ended it; asyncio's server callback must not find a cancelled task (it logs one)
        finally:
            connection.close()
            self._open.discard(connection)
            self._handlers.discard(task)

    async def _serve(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        if self.mode == "blackhole":
            self.counts.blackholed += 1
            await self._swallow(connection, reader)
            return
        try:
            upstream_reader, connection.upstream = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self.counts.target_unreachable += 1
            connection.reset()
            return
        pumps = [
            asyncio.create_task(self._pump(connection, reader, connection.upstream, from_client=True)),
            asyncio.create_task(self._pump(connection, upstream_reader, connection.client, from_client=False)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _swallow(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        """Read and drop whatever the client sends until it goes away (or a reset)."""
        with contextlib.suppress(OSError):
            while await reader.read(CHUNK):
                if self.mode == "reset":
                    connection.reset()
                    self.counts.resets += 1
                    return

    async def _pump(
        self, connection: _Connection, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        """Copy one direction chunk by chunk, applying the fault of the moment; half-close on EOF."""
        while chunk := await source.read(CHUNK):
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            if self.mode == "reset":
                connection.reset()
                self.counts.resets += 1
                raise ConnectionResetError("reset by the fault proxy")
            if self.mode == "blackhole" or connection.muted:
                continue
            cut = from_client and self.cut_after is not None and self.cut_after in chunk
            if cut:
                self.cut_after = None
                connection.muted = True  # before the target can answer: no byte of its answer gets through
            sink.write(chunk)
            await sink.drain()
            self.counts.forwarded_bytes += len(chunk)
            if cut:
                await asyncio.sleep(self.cut_delay)
                connection.reset()
                self.counts.cuts += 1
                raise ConnectionResetError("cut by the fault proxy")
        if sink.can_write_eof() and not sink.transport.is_closing():
            sink.write_eof()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
