"""Short reads on the hot path, at the lowest cost each database allows.

Measured on this machine (docs/benchmarks.md §3): one indexed SELECT costs ~0.9 ms through aiosqlite (each call
is a round trip to its worker thread) and ~0.007 ms through ``sqlite3`` in the calling thread; on PostgreSQL
~0.65 ms through the gateway's engine, of which ~0.35 ms is the pre-ping and most of the rest the BEGIN and
ROLLBACK around it, against ~0.39 ms without them. Every SCIM request authenticates and most IdP traffic is one
``userName eq`` lookup, so that overhead, not the query, bounds /scim/v2.

- SQLite: the read runs inline on the event loop, on a read-only connection to the same file. WAL readers never
  wait for the writer, so it does not stall behind a write; the rare ``SQLITE_BUSY`` a reader can get (WAL
  recovery, a truncating checkpoint) hands the read to the threaded engine after a 50 ms busy timeout.
- PostgreSQL: the read runs through ``AsyncConnection.run_sync`` (asyncpg, no thread) on an engine of its own:
  autocommit, read-only transactions, no pre-ping, a small pool (``QUICK_POOL_SIZE``). A connection found dead
  (a server restart) is discarded and the read retried once on a fresh one, as the pre-ping would have done.

Only bounded work belongs here: lookups by a unique or selective index that return at most a page. A scan of a
large table would block every other request of the process for its duration; those stay on the async engine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.settings import DatabaseSettings
from gateway.storage import database

T = TypeVar("T")

#: SQLITE_BUSY and SQLITE_LOCKED (https://www.sqlite.org/rescode.html): the only errors worth a second try.
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

#: PostgreSQL connections of the quick reader. Its reads take well under a millisecond, so a few connections
#: serve any number of concurrent requests (they queue in the pool, not in the kernel's run queue): on a 2-core
#: host ten busy backends beside the gateway pushed the p99 of a lookup from ~10 to ~60 ms.
QUICK_POOL_SIZE = 5

#: How long an inline read waits on a locked database before it hands the read to the threaded engine.
INLINE_BUSY_TIMEOUT_MS = 50


def _inline_twin(engine: AsyncEngine) -> Engine | None:
    """A synchronous, read-only engine on the same SQLite file; None for PostgreSQL or an in-memory database."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    twin = create_engine(make_url(url).set(drivername="sqlite+pysqlite"), connect_args={"check_same_thread": False})

    @event.listens_for(twin, "connect")
    def _configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN, so a read sees one snapshot.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA query_only=ON")  # this engine can never write, whatever a caller passes it
            cursor.execute(f"PRAGMA busy_timeout={INLINE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(twin, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return twin


class QuickReads:
    """Runs a short synchronous read function against the database without a thread hop or extra round trip."""

    def __init__(self, engine: AsyncEngine, *, inline: Engine | None = None, owned: bool = False) -> None:
        self._engine = engine
        self._inline = inline
        self._owned = owned

    @classmethod
    def open(cls, settings: DatabaseSettings, engine: AsyncEngine) -> QuickReads:
        """The fast reader beside the gateway's ``engine``: inline on SQLite, an engine of its own on PostgreSQL."""
        if engine.dialect.name == "sqlite":
            return cls(engine, inline=_inline_twin(engine))
        own = database.create_engine(
            settings,
            pre_ping=False,
            read_only=True,
            isolation_level="AUTOCOMMIT",
            pool_size=QUICK_POOL_SIZE,
            max_overflow=0,
            pool_timeout=settings.connect_timeout_seconds,
        )
        return cls(own, owned=True)

    @property
    def inline(self) -> bool:
        return self._inline is not None

    async def run(self, read: Callable[[Connection], T]) -> T:
        """``read(connection)``; storage failures raise ``StorageError`` with the password masked (fail closed)."""
        if self._inline is not None:
            with database.storage_errors(self._engine, "database read"):
                try:
                    with self._inline.connect() as conn:
                        return read(conn)
                except exc.OperationalError as error:
                    if getattr(error.orig, "sqlite_errorcode", None) not in _BUSY:
                        raise
            # Busy or locked: the threaded engine waits for the lock without blocking the loop.
        with database.storage_errors(self._engine, "database read"):
            try:
                return await self._run_async(read)
            except exc.DBAPIError as error:
                if not error.connection_invalidated:
                    raise
            return await self._run_async(read)  # the pool dropped the dead connection: once more, on a new one

    async def _run_async(self, read: Callable[[Connection], T]) -> T:
        async with self._engine.connect() as conn:
            return await conn.run_sync(read)

    async def dispose(self) -> None:
        if self._inline is not None:
            self._inline.dispose()
        if self._owned:
            await self._engine.dispose()
