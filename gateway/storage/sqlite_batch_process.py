"""The access log's SQLite batch writer in a process of its own.

Why a process: a Python process runs Python code one thread at a time (the GIL). Measured with the forward-auth
benchmark (docs/benchmarks.md §8), the gateway process was at one full core of Python while the machine had a
fifth of its cores idle: the event loop and the writer thread took turns, the writer — ~18 µs of CPU per record for
its row, its chain hashes and its insert — got the smaller share, fell behind the requests, its queue filled and
the gateway refused traffic (fail closed, as it must). In a process of its own the writer's work runs beside the
event loop instead of in turns with it; what stays in the gateway's process is reading each record's values
(~0.5 µs) and pickling the batch (~1.7 µs per record), on the event loop, which also writes and reads the pipes.

The protocol is frames on the child's stdin and stdout (a 4-byte length, then a pickle; parent and child are the
same program, so pickle is safe here): ``("open", config)`` once, then ``("write", batch)`` answered after the
batch committed, and ``("contains", values)``. Each answer is ``("ok", value)`` or ``("error", message,
detail)``. The child ignores Ctrl-C (it reaches the whole process group) and exits when its stdin closes, so it
never outlives the gateway and never stops between a batch and its answer.

Nothing is lost or written twice. A batch counts as written only when its answer came back; until then the caller
keeps it (``gateway.audit.writer`` retries). When the child dies or stops answering after a batch was sent, the
batch may or may not have committed: a new child is asked whether that batch's first and last records are in the
table (a batch commits whole or not at all), and the batch is sent again unless they are — at once, and if that
child is lost too, by the caller's next write, which settles the question first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import weakref
from collections.abc import Sequence
from typing import Any

from gateway.errors import StorageError
from gateway.storage.sqlite_batches import SqliteBatchWriter
from gateway.storage.sqlite_chain import ChainedInsert

log = logging.getLogger("channelgate.audit")

_LENGTH = struct.Struct(">I")
#: How long the parent waits for an answer beyond SQLite's own busy timeout before it counts the child as hung.
_ANSWER_GRACE_SECONDS = 30.0
#: How long a stopping child may take to exit once its stdin closed (it has nothing in flight then).
_EXIT_SECONDS = 5.0
#: The writer's work can wait a few milliseconds (its queue absorbs bursts); the event loop's cannot. On a
#: saturated machine a writer at equal priority took CPU from the loop and from the front proxy the loop waits on:
#: the forward-auth benchmark answered 9.6-10.5k req/s with the writer at nice 0, 11-13k at 5 or 10, with the queue
#: drained after every run; at 19 the writer fell behind (18k records waiting after 25 s). Still served, not
#: starved: a nice-10 process keeps a tenth of a busy core's share.
_NICENESS = 10


class _Lost(Exception):
    """The child died or stopped answering: the outcome of the message in flight is unknown."""


def _send(fd: int, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None at end of file before the first byte."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            if remaining == size and not chunks:
                return None
            raise _Lost("the stream ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int) -> Any:
    """The child's next frame; None at end of file."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    body = _read_exactly(fd, _LENGTH.unpack(header)[0])
    if body is None:
        raise _Lost("the stream ended inside a frame")
    return pickle.loads(body)  # noqa: S301 - our own child process, over its private pipe


def _stop(holder: list[subprocess.Popen[bytes]]) -> None:
    """Close the child's stdin (it exits after its current batch) and reap it; kill it if it does not exit."""
    while holder:
        process = holder.pop()
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


class _Child:
    """A running child and its pipes, read and written without blocking by the event loop that started it.

    The pipes are plain non-blocking descriptors waited on with ``add_reader``/``add_writer`` for one frame at a
    time, not asyncio transports: nothing stays registered with the loop between batches, so a writer dropped
    without ``close()`` or outliving its loop leaves no transport behind (its finalizer closes the pipes).
    """

    def __init__(self, process: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.loop = loop
        self._requests, self._answers = process.stdin.fileno(), process.stdout.fileno()
        os.set_blocking(self._requests, False)
        os.set_blocking(self._answers, False)
        self._buffer = bytearray()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._requests, view) :]
            except BlockingIOError:
                await self._ready(self.loop.add_writer, self.loop.remove_writer, self._requests)

    async def receive(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                chunk = os.read(self._answers, 1 << 16)
            except BlockingIOError:
                await self._ready(self.loop.add_reader, self.loop.remove_reader, self._answers)
                continue
            if not chunk:
                raise _Lost(f"the writer process closed its answers (exit status {self.process.poll()})")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _ready(self, add: Any, remove: Any, fd: int) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        add(fd, wake)
        try:
            await ready
        finally:
            remove(fd)


class BatchWriterProcess:
    """Writes batches of one table through a child process running ``SqliteBatchWriter``; one batch at a time.

    The frames are written and read by the event loop itself: with a worker thread in between, every batch cost
    two hand-overs of the GIL between that thread and the busy event loop, each waiting up to the switch interval
    (at CPython's 5 ms the forward-auth harness answered 6,400-6,800 checks a second that way, 11,500-13,000 with
    the pipes read here). The child starts with the first batch, again after it died, and again when a different
    event loop writes (the pipes belong to one).
    """

    def __init__(
        self, path: str, table: str, columns: Sequence[str], *, busy_timeout_seconds: float, chained: bool
    ) -> None:
        self._config = (path, table, tuple(columns), busy_timeout_seconds, chained)
        self._answer_seconds = busy_timeout_seconds + _ANSWER_GRACE_SECONDS
        self._child: _Child | None = None
        #: The running child's process, if any (a list, so the finalizer can stop it without this object).
        self._holder: list[subprocess.Popen[bytes]] = []
        #: (first values, last values, count) of a batch sent to a child that died before answering.
        self._unsure: tuple[Sequence[Any], Sequence[Any], int] | None = None
        #: One write at a time, per event loop (an asyncio lock belongs to the loop that first waits on it).
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        weakref.finalize(self, _stop, self._holder)

    async def write(self, batch: Sequence[Sequence[Any]]) -> None:
        """Commit ``batch`` in order, or raise ``StorageError``: with none of it written, or with its outcome
        unknown (the child died twice), which the next call settles before writing.

        A child found dead when the batch is sent (killed, crashed, out of memory) is replaced at once and the
        batch settled and sent again; only a second loss is the caller's error.
        """
        loop = asyncio.get_running_loop()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = asyncio.Lock()
        async with turn:
            for attempt in (1, 2):
                if self._unsure is not None:
                    batch = await self._settle(batch)
                if not batch:
                    return
                try:
                    await self._ask(("write", list(batch)))
                    return
                except _Lost as lost:
                    self._unsure = (batch[0], batch[-1], len(batch))
                    if attempt == 2:
                        raise StorageError(
                            "the access-log writer process stopped twice before confirming a batch; the batch is "
                            "kept and its outcome is checked before it is written again",
                            detail=str(lost),
                        ) from None
                    log.warning("access-log writer process lost (%s); starting another", lost)

    def close(self) -> None:
        """Stop the child: it exits once its stdin closes (nothing is in flight between two batches)."""
        self._child = None
        _stop(self._holder)

    async def _settle(self, batch: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """``batch`` without the records of the unsure batch if that one did commit (its retry starts with it)."""
        assert self._unsure is not None
        first, last, count = self._unsure
        try:
            starts_with_it = len(batch) >= count and batch[0] == first and batch[count - 1] == last
            committed = (
                starts_with_it and await self._query(("contains", first)) and await self._query(("contains", last))
            )
        except _Lost as lost:
            raise StorageError(
                "the access-log writer process cannot be asked whether a batch was written", detail=str(lost)
            ) from None
        self._unsure = None
        if committed:
            log.warning("%d access-log records committed before their writer process died; not written again", count)
            return batch[count:]
        return batch

    async def _ask(self, message: tuple[Any, ...]) -> Any:
        return await self._exchange(await self._running(), message)

    async def _query(self, message: tuple[Any, ...]) -> Any:
        """A question that changes nothing: asked again of a new child if the child was lost meanwhile."""
        try:
            return await self._ask(message)
        except _Lost:
            return await self._ask(message)

    async def _exchange(self, child: _Child, message: tuple[Any, ...]) -> Any:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            async with asyncio.timeout(self._answer_seconds):
                await child.send(_LENGTH.pack(len(payload)) + payload)
                header = await child.receive(_LENGTH.size)
                answer = pickle.loads(await child.receive(_LENGTH.unpack(header)[0]))  # noqa: S301
        except BaseException as error:
            # Whatever stopped the exchange (the child died, hung, or this task was cancelled), its answer can no
            # longer be matched to its question: this child is done.
            self._kill()
            if isinstance(error, Exception):
                raise _Lost(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__) from None
            raise
        if answer[0] == "error":
            raise StorageError(answer[1], detail=answer[2])
        return answer[1]

    async def _running(self) -> _Child:
        """The child, started (and opened) if none runs for this loop. Raises ``StorageError`` when it cannot
        start: nothing was sent then."""
        loop = asyncio.get_running_loop()
        child = self._child
        if child is not None and child.loop is loop and child.process.poll() is None:
            return child
        self._kill()
        try:
            process = await asyncio.to_thread(
                subprocess.Popen,  # our own module, with this interpreter
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
        except OSError as error:
            raise StorageError(
                "cannot start the access-log writer process", detail=f"{type(error).__name__}: {error}"
            ) from None
        self._holder.append(process)
        child = _Child(process, loop)
        self._child = child
        try:
            await self._exchange(child, ("open", *self._config))
        except (OSError, _Lost) as error:
            self._kill()
            raise StorageError("the access-log writer process did not start", detail=str(error)) from None
        return child

    def _kill(self) -> None:
        self._child = None
        _kill(self._holder)


def _kill(holder: list[subprocess.Popen[bytes]]) -> None:
    while holder:
        process = holder.pop()
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def main() -> int:
    """The child: answer frames on stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(_NICENESS)
    # Answers go to a private copy of stdout; anything else printed here goes to stderr, not into the protocol.
    answers = os.dup(1)
    os.dup2(2, 1)
    writer: SqliteBatchWriter | None = None
    while (message := _receive(0)) is not None:
        try:
            if message[0] == "open":
                path, table, columns, busy_timeout, chained = message[1:]
                writer = SqliteBatchWriter(
                    path, table, columns, busy_timeout_seconds=busy_timeout,
                    chain=ChainedInsert(columns) if chained else None,
                )  # fmt: skip
                answer: tuple[Any, ...] = ("ok", None)
            elif writer is None:
                answer = ("error", "the access-log writer process was not opened", None)
            elif message[0] == "write":
                writer.write(message[1])
                answer = ("ok", None)
            else:
                answer = ("ok", writer.contains(message[1]))
        except StorageError as error:
            answer = ("error", error.message, error.detail)
        except Exception as error:  # answered, so the parent keeps the batch and retries
            log.exception("access-log writer process failed")
            answer = ("error", "the access-log writer process failed", f"{type(error).__name__}: {error}")
        _send(answers, answer)
    if writer is not None:
        writer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
