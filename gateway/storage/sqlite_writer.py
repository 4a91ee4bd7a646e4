"""Short writes and reads on SQLite by ``sqlite3`` itself: writes in a worker thread, committed in groups.

Measured on this machine, one statement through SQLAlchemy and aiosqlite costs ~0.3-0.7 ms of CPU in the event
loop's thread (statement building, cache key, a round trip to aiosqlite's thread per cursor call), the same
statement through ``sqlite3`` ~0.01-0.03 ms. A bulk offboarding runs about a hundred of them per agent (the
trigger's transaction, the worker's claims and results, the connectors' ``agent_secrets``), which made the
gateway's CPU, not the channels, the limit (docs/benchmarks.md §4).

:class:`SqliteWriter` runs *units* (functions of a ``sqlite3.Connection``) in a worker thread. Units queued
while a commit is under way go into the next transaction together (group commit): each caller returns only
after the transaction holding its unit committed, with ``synchronous=FULL`` as the gateway's engine, so every
caller keeps its durability and concurrent writers share the fsync. Each unit runs in a SAVEPOINT: one that
raises is rolled back alone and its caller gets the error, the others commit. Transactions are ``BEGIN
IMMEDIATE`` under this process's write gate for the file, like every writer of the engine. Once the thread has
the turn it commits group after group without coming back to the event loop in between, until the queue is
empty or another writer waits for the turn: on a busy loop each hand-over between loop and thread waited
several milliseconds, and with two of them per group the groups, not the CPU, paced a bulk offboarding.

:class:`SqliteReader` runs short indexed reads inline on the event loop (``gateway.storage.quick_reads`` explains
why that is safe in WAL mode); a read that finds the database busy is run again in a thread, where it may wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import StorageError
from gateway.storage.database import on_dispose, sqlite_busy_timeout, write_gate, write_gate_wanted

T = TypeVar("T")
#: A unit of work: runs in the writer's thread inside the group's transaction; its return value is the result.
Unit = Callable[[sqlite3.Connection], T]

#: Units committed in one transaction at most, so one group does not hold the write gate for long.
MAX_GROUP = 256
#: SQLITE_BUSY and SQLITE_LOCKED: an inline read that meets them is run again in a thread.
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_INLINE_BUSY_TIMEOUT_MS = 50


def from_sqlite(text: str) -> datetime:
    """A ``DATETIME`` text read back as an aware UTC moment, as ``gateway.storage._time.from_db`` gives it."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _failure(path: str, action: str, error: sqlite3.Error) -> StorageError:
    return StorageError(f"database {action} failed on sqlite:///{path}", detail=f"{type(error).__name__}: {error}")


class _Queued:
    __slots__ = ("future", "loop", "unit")

    def __init__(self, unit: Unit[Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.unit = unit
        self.future = future
        self.loop = loop


def _deliver(group: list[_Queued], outcomes: list[tuple[bool, Any]]) -> None:
    """On the callers' event loop: each caller gets its unit's result or error (unless it stopped waiting)."""
    for queued, (ok, value) in zip(group, outcomes, strict=True):
        if queued.future.done():
            continue
        if ok:
            queued.future.set_result(value)
        else:
            queued.future.set_exception(value)


def _hand_back(group: list[_Queued], outcomes: list[tuple[bool, Any]]) -> None:
    """From the thread: hand each caller's outcome to its event loop (one call per loop; a loop that has closed
    has no caller left to tell)."""
    by_loop: dict[asyncio.AbstractEventLoop, tuple[list[_Queued], list[tuple[bool, Any]]]] = {}
    for queued, outcome in zip(group, outcomes, strict=True):
        members, results = by_loop.setdefault(queued.loop, ([], []))
        members.append(queued)
        results.append(outcome)
    for loop, (members, results) in by_loop.items():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver, members, results)


class SqliteWriter:
    """The write side of one SQLite file in this process (see the module docstring)."""

    def __init__(self, path: str, *, busy_timeout_seconds: float) -> None:
        self.path = path
        self._resolved = str(Path(path).expanduser().resolve())
        self._busy_timeout = busy_timeout_seconds
        self._connection: sqlite3.Connection | None = None
        #: Guards the connection: the thread writing, or ``close``.
        self._lock = threading.Lock()
        #: Guards the queue: callers append on the event loop, the thread takes.
        self._queue_lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._turn: asyncio.Task[None] | None = None

    async def run(self, unit: Unit[T]) -> T:
        """Run ``unit`` in the next group's transaction; its result once that transaction committed.

        A caller cancelled before its unit started leaves no effect; one cancelled later may, as with any
        database write whose caller stopped waiting during the commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queue_lock:
            self._queue.append(_Queued(unit, future, loop))
        turn = self._turn
        if turn is None or turn.done() or turn.get_loop() is not loop:
            self._turn = loop.create_task(self._take_turns(), name="channelgate-sqlite-writer")
        return await future

    async def _take_turns(self) -> None:
        """Hold the file's write turn (the gate every writer of this process queues on) while the thread commits
        groups back to back, without coming back to the event loop between them; hand the turn over when the
        queue is empty or another writer waits for it."""
        while self._queue:
            try:
                async with write_gate(self._resolved):
                    await asyncio.to_thread(self._commit_groups)
            except Exception as error:  # no turn: every queued caller gets the failure
                with self._queue_lock:
                    queued, self._queue = self._queue, []
                _hand_back(queued, [(False, error)] * len(queued))

    def _commit_groups(self) -> None:
        """In the thread: commit groups of queued units until none is left or another writer wants its turn."""
        while True:
            with self._queue_lock:
                group = [queued for queued in self._queue[:MAX_GROUP] if not queued.future.done()]
                del self._queue[:MAX_GROUP]
            if group:
                try:
                    outcomes = self._transaction([queued.unit for queued in group])
                except BaseException as error:
                    _hand_back(group, [(False, error)] * len(group))
                    if not isinstance(error, StorageError):
                        raise
                else:
                    _hand_back(group, outcomes)
            with self._queue_lock:
                if not self._queue or write_gate_wanted(self._resolved):
                    return

    def _transaction(self, units: list[Unit[Any]]) -> list[tuple[bool, Any]]:
        """One transaction: each unit in a savepoint of its own; ``StorageError`` when the transaction failed (then
        nothing of the group was written)."""
        with self._lock:
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                self._drop()
                raise _failure(self.path, "write", error) from None
            try:
                outcomes = _apply(connection, units, self.path)
                connection.execute("COMMIT")
            except BaseException as error:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                self._drop()  # a fresh connection next time, whatever state this one is in
                if isinstance(error, sqlite3.Error):  # disk full, I/O error, a savepoint gone: the whole group
                    raise _failure(self.path, "write", error) from None
                raise
            return outcomes

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA synchronous=FULL")  # as the gateway's engine: an audit record must survive
            connection.execute("PRAGMA foreign_keys=ON")
            self._connection = connection
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def _apply(connection: sqlite3.Connection, units: list[Unit[Any]], path: str) -> list[tuple[bool, Any]]:
    """Each unit in a savepoint of its own: (True, its result), or (False, its error) with its writes undone."""
    outcomes: list[tuple[bool, Any]] = []
    for unit in units:
        connection.execute("SAVEPOINT unit")
        try:
            outcomes.append((True, unit(connection)))
        except Exception as error:  # handed to the unit's own caller
            connection.execute("ROLLBACK TO unit")
            outcomes.append((False, _failure(path, "write", error) if isinstance(error, sqlite3.Error) else error))
        connection.execute("RELEASE unit")
    return outcomes


class SqliteReader:
    """Short reads of one SQLite file, inline on the event loop (see the module docstring)."""

    def __init__(self, path: str, *, busy_timeout_seconds: float) -> None:
        self.path = path
        self._busy_timeout = busy_timeout_seconds
        self._inline: sqlite3.Connection | None = None
        self._threaded: sqlite3.Connection | None = None
        self._threaded_lock = threading.Lock()

    def _open(self, busy_timeout_ms: int) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA query_only=ON")  # this connection can never write
        connection.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        return connection

    async def run(self, read: Unit[T]) -> T:
        """``read(connection)`` in one read transaction (one snapshot); ``StorageError`` when it fails."""
        return await self._read(lambda connection: _snapshot(connection, read))

    async def one(self, sql: str, values: Sequence[Any]) -> Any:
        """The first row of one statement (a statement is its own snapshot: no BEGIN and COMMIT around it)."""
        return await self._read(lambda connection: connection.execute(sql, values).fetchone())

    async def all(self, sql: str, values: Sequence[Any]) -> list[Any]:
        """Every row of one statement."""
        return await self._read(lambda connection: connection.execute(sql, values).fetchall())

    async def _read(self, read: Unit[T]) -> T:
        try:
            if self._inline is None:
                self._inline = self._open(_INLINE_BUSY_TIMEOUT_MS)
            return read(self._inline)
        except sqlite3.Error as error:
            if getattr(error, "sqlite_errorcode", None) not in _BUSY:
                self._close_inline()
                raise _failure(self.path, "read", error) from None
        return await asyncio.to_thread(self._run_threaded, read)

    def _run_threaded(self, read: Unit[T]) -> T:
        with self._threaded_lock:
            try:
                if self._threaded is None:
                    self._threaded = self._open(int(self._busy_timeout * 1000))
                return read(self._threaded)
            except sqlite3.Error as error:
                if self._threaded is not None:
                    self._threaded.close()
                    self._threaded = None
                raise _failure(self.path, "read", error) from None

    def _close_inline(self) -> None:
        if self._inline is not None:
            connection, self._inline = self._inline, None
            connection.close()

    def close(self) -> None:
        self._close_inline()
        with self._threaded_lock:
            if self._threaded is not None:
                self._threaded.close()
                self._threaded = None


def _snapshot(connection: sqlite3.Connection, read: Unit[T]) -> T:
    connection.execute("BEGIN")
    try:
        return read(connection)
    finally:
        connection.execute("COMMIT")


class SqliteAccess:
    """The writer and the reader of one engine's SQLite file, shared by every repository of that engine, so one
    group commit takes the pipeline's and the connectors' writes together."""

    def __init__(self, path: str, busy_timeout_seconds: float) -> None:
        self.writer = SqliteWriter(path, busy_timeout_seconds=busy_timeout_seconds)
        self.reader = SqliteReader(path, busy_timeout_seconds=busy_timeout_seconds)

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


_ACCESS: weakref.WeakKeyDictionary[AsyncEngine, SqliteAccess] = weakref.WeakKeyDictionary()


def sqlite_access(engine: AsyncEngine) -> SqliteAccess | None:
    """The shared direct access to ``engine``'s SQLite file; None for PostgreSQL or an in-memory database (the
    engine's own connections are then the only ones that can see it)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    access = _ACCESS.get(engine)
    if access is None:
        access = _ACCESS[engine] = SqliteAccess(str(Path(url.database).expanduser()), sqlite_busy_timeout(engine))
        on_dispose(engine, access.close)
    return access
