"""The database engine: SQLite (embedded, one node) or PostgreSQL (replicated gateways), tuned once here.

SQLite runs in WAL mode so readers never block the writer, with ``synchronous=FULL``: in WAL mode ``NORMAL``
is safe from corruption but may lose the last committed transactions on power loss, and the access log is an
audit trail whose committed records must survive (ASVS 5.0 §16.4, log protection). ``foreign_keys=ON`` because SQLite
ignores foreign keys otherwise. SQLAlchemy, not the ``sqlite3`` driver, emits ``BEGIN``: the driver's legacy
mode never begins before a SELECT or SAVEPOINT, which breaks repeatable reads and nested transactions. Write
transactions use ``BEGIN IMMEDIATE`` so two writers queue on ``busy_timeout`` instead of one failing with
``SQLITE_BUSY`` when it upgrades its read lock.

SQLite has one writer at a time. Inside one process, writers also queue on an asyncio lock per database file
(:func:`write_gate`) before they ask SQLite: SQLite's busy handler makes a waiting writer sleep and poll (sleeps
growing to 100 ms), so dozens of concurrent writers (a bulk offboarding: kills, pipeline commits, access-log
batches) spent their time asleep and the slowest ran into ``busy_timeout``; on the lock they are woken in turn
the moment the writer before them commits. ``busy_timeout`` still governs other processes (the CLI).

Errors leave this package as ``StorageError`` with the URL's password masked: a message may reach a log line.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage import postgres_options

#: Connection execution option that makes the SQLite ``begin`` hook take the write lock up front.
_WRITE_OPTION = "channelgate_write"
#: ``url.database`` of each SQLite engine → its resolved file (the write gate's key).
_RESOLVED: dict[str, str] = {}
#: SQLite database files whose writers queue in-process (``write_gate``), with the wait limit of each.
_GATE_LIMITS: dict[str, float] = {}
#: The queues themselves, per event loop (an asyncio lock belongs to one loop; the CLI runs several in turn).
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()
#: Writers waiting for each file's turn (a writer holding it for a stream of work hands it over when one waits).
_WAITING: dict[str, int] = {}
#: What else holds the database open beside an engine (``gateway.storage.sqlite_writer``): closed with it.
_COMPANIONS: weakref.WeakKeyDictionary[AsyncEngine, list[Callable[[], None]]] = weakref.WeakKeyDictionary()
#: How a worker process reaches each PostgreSQL engine's database (password and TLS included).
_WORKER_DSN: weakref.WeakKeyDictionary[AsyncEngine, str] = weakref.WeakKeyDictionary()


def register_write_gate(path: str, busy_timeout_seconds: float) -> None:
    """Make writers of the SQLite file ``path`` in this process queue on one lock (see the module docstring)."""
    _GATE_LIMITS[path] = busy_timeout_seconds


@asynccontextmanager
async def write_gate(path: str | None) -> AsyncIterator[None]:
    """Hold this process's write turn for the SQLite file ``path`` (no-op for PostgreSQL, ``path`` None). A turn
    not granted within the busy timeout is a ``StorageError``, as SQLite's own ``database is locked`` would be."""
    limit = _GATE_LIMITS.get(path) if path is not None else None
    if path is None or limit is None:
        yield
        return
    locks = _GATES.setdefault(asyncio.get_running_loop(), {})
    lock = locks.get(path)
    if lock is None:
        lock = locks[path] = asyncio.Lock()
    _WAITING[path] = _WAITING.get(path, 0) + 1
    try:
        async with asyncio.timeout(limit):
            await lock.acquire()
    except TimeoutError:
        raise StorageError(
            f"database write failed on sqlite:///{path}",
            detail=f"no write turn within {limit:g} s (another write in this process held the database)",
        ) from None
    finally:
        _WAITING[path] -= 1
    try:
        yield
    finally:
        lock.release()


def write_gate_wanted(path: str) -> bool:
    """Whether a writer waits for the write turn of ``path`` (safe to ask from any thread)."""
    return _WAITING.get(path, 0) > 0


def create_engine(
    settings: DatabaseSettings,
    *,
    enforce_foreign_keys: bool = True,
    pre_ping: bool = True,
    read_only: bool = False,
    **options: Any,
) -> AsyncEngine:
    """Build the async engine for ``settings.url``.

    ``enforce_foreign_keys=False`` is for SQLite migrations only: a batch migration recreates a table, and
    dropping the old copy with foreign keys on would cascade-delete its children (SQLite §"ALTER TABLE").
    ``pre_ping=False`` (PostgreSQL) saves a round trip per checkout for callers that retry a dropped
    connection themselves (``gateway.storage.quick_reads``), and ``read_only=True`` makes the server refuse
    every write on its connections; ``options`` go to SQLAlchemy as they are.
    """
    url = make_url(settings.url.get_secret_value())
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, settings, enforce_foreign_keys=enforce_foreign_keys)
    options.setdefault("pool_size", settings.pool_size)
    options.setdefault("max_overflow", settings.max_overflow)
    options.setdefault("pool_timeout", settings.pool_timeout_seconds)
    options.setdefault("pool_recycle", settings.pool_recycle_seconds or -1)
    engine = create_async_engine(
        postgres_options.engine_url(settings),
        pool_pre_ping=pre_ping,
        **options,
        connect_args=postgres_options.connect_args(settings, read_only=read_only),
    )
    _WORKER_DSN[engine] = postgres_options.worker_dsn(settings)
    return engine


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def _create_private(path: Path) -> None:
    """Create a new database file (and its directory) readable by this user only.

    The file holds the access log (names, addresses, paths) and the vault's sealed credentials. SQLite would
    create it with 0644 less the umask, world-readable under the usual 022, and gives its ``-wal`` and ``-shm``
    files the database file's own permissions, so creating the file 0600 first keeps all three private. An
    existing file is left as its owner set it.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create the database directory {path.parent}: {error.strerror}") from None
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as error:
        raise StorageError(f"cannot create the database file {path}: {error.strerror}") from None


def _sqlite_engine(url: URL, settings: DatabaseSettings, *, enforce_foreign_keys: bool) -> AsyncEngine:
    options: dict[str, Any] = {"connect_args": {"timeout": settings.connect_timeout_seconds}}
    if not _is_memory(url):
        assert url.database is not None
        _create_private(Path(url.database).expanduser())
        options["pool_size"] = settings.pool_size
    engine = create_async_engine(url, **options)
    if not _is_memory(url):
        assert url.database is not None
        resolved = str(Path(url.database).expanduser().resolve())
        _RESOLVED[url.database] = resolved
        register_write_gate(resolved, settings.connect_timeout_seconds)
    busy_ms = int(settings.connect_timeout_seconds * 1000)
    foreign_keys = "ON" if enforce_foreign_keys else "OFF"

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, see the module docstring.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA foreign_keys={foreign_keys}")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _sqlite_path(engine: AsyncEngine) -> str | None:
    """The resolved file of a SQLite engine registered for the write gate (no filesystem call: per write)."""
    return _RESOLVED.get(engine.url.database or "") if engine.url.get_backend_name() == "sqlite" else None


def sqlite_busy_timeout(engine: AsyncEngine) -> float:
    """How long a writer of this SQLite engine waits for its turn (the engine's ``busy_timeout``), in seconds."""
    path = _sqlite_path(engine)
    return _GATE_LIMITS.get(path, 5.0) if path is not None else 5.0


def on_dispose(engine: AsyncEngine, close: Callable[[], None]) -> None:
    """Call ``close`` when :meth:`Database.dispose` disposes ``engine`` (direct SQLite connections beside it)."""
    _COMPANIONS.setdefault(engine, []).append(close)


def worker_dsn(engine: AsyncEngine) -> str:
    """A ``postgresql://`` DSN with which another process reaches this engine's database as the engine does
    (password, ``sslmode`` and certificate files as libpq parameters; see ``postgres_options``)."""
    known = _WORKER_DSN.get(engine)
    if known is not None:
        return known
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def safe_url(engine: AsyncEngine) -> str:
    """The engine's URL with its password masked, for messages."""
    return engine.url.render_as_string(hide_password=True)


def _scrub(message: str, engine: AsyncEngine) -> str:
    password = engine.url.password
    if password:
        message = message.replace(str(password), "***")
    return message


@contextmanager
def storage_errors(engine: AsyncEngine, action: str) -> Iterator[None]:
    """Turn driver and connection failures into ``StorageError``; integrity errors pass through untouched.

    The original exception is not chained (``from None``): driver messages and tracebacks may carry the DSN.
    """
    try:
        yield
    except exc.IntegrityError:
        raise
    except (exc.DBAPIError, exc.TimeoutError, OSError) as error:
        cause = _scrub(f"{type(error).__name__}: {getattr(error, 'orig', None) or error}", engine)
        raise StorageError(f"{action} failed on {safe_url(engine)}", detail=cause.splitlines()[0]) from None


@asynccontextmanager
async def write_transaction(engine: AsyncEngine, conn: AsyncConnection | None = None) -> AsyncIterator[AsyncConnection]:
    """A write transaction that commits on exit, or ``conn`` as given (its owner commits).

    Passing ``conn`` lets a state change and its access-log record commit together (or not at all).
    """
    if conn is not None:
        yield conn
        return
    async with write_gate(_sqlite_path(engine)):
        with storage_errors(engine, "database write"):
            async with engine.connect() as fresh:
                await fresh.execution_options(**{_WRITE_OPTION: True})
                async with fresh.begin():
                    yield fresh


@asynccontextmanager
async def read_transaction(engine: AsyncEngine, conn: AsyncConnection | None = None) -> AsyncIterator[AsyncConnection]:
    """A read-only snapshot, rolled back on exit, or ``conn`` as given."""
    if conn is not None:
        yield conn
        return
    with storage_errors(engine, "database read"):
        async with engine.connect() as fresh:
            yield fresh


class Database:
    """The application's one engine, with a health check and the write-transaction entry point."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> Database:
        return cls(create_engine(settings))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise ``StorageError`` (password masked) when the database cannot answer."""
        with storage_errors(self.engine, "database ping"):
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction for several repository calls: pass the connection as ``conn=``."""
        return write_transaction(self.engine)

    async def dispose(self) -> None:
        for close in _COMPANIONS.pop(self.engine, []):
            close()
        await self.engine.dispose()
