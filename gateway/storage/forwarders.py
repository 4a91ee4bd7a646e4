"""The SIEM forwarders' side of the database: each one's cursor, the sealed records after it, and its lease.

A forwarder follows ``chain_pos``, not ``seq``: ``chain_pos`` is assigned in commit order by the sealer, so a
record that commits late (a PostgreSQL sequence value taken early) is never passed over. The cursor is the chain
position of the last record the SIEM acknowledged; it only moves forward.

Only one replica forwards a given forwarder at a time: on PostgreSQL a session advisory lock held on a connection
of its own (released by the server if the replica dies, so another takes over at once); on a SQLite file an
``flock`` on a file beside the database (replicas sharing a SQLite file share a host); on an in-memory database
there is one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from typing import Any, Protocol

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import StorageError
from gateway.storage._time import from_db, to_db
from gateway.storage.access_log import AccessRecord
from gateway.storage.database import read_transaction, storage_errors, write_transaction
from gateway.storage.schema import access_log, audit_anchor, audit_forwarders
from gateway.storage.sqlite_batches import sqlite_file
from gateway.timeutil import utcnow

_COLUMNS = tuple(column.name for column in access_log.columns)


def _record(row: Any) -> AccessRecord:
    values = {name: row[name] for name in _COLUMNS}
    values["time"] = from_db(values["time"])
    return AccessRecord(**values)


class ForwarderStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def cursor(self, name: str) -> int:
        """The chain position the forwarder delivered up to (0 for a new forwarder: it starts at the beginning)."""
        query = select(audit_forwarders.c.chain_pos).where(audit_forwarders.c.name == name)
        async with read_transaction(self._engine) as conn:
            position = (await conn.execute(query)).scalar()
        if position is not None:
            return int(position)
        with contextlib.suppress(IntegrityError):  # another replica created it first
            async with write_transaction(self._engine) as conn:
                await conn.execute(insert(audit_forwarders).values(name=name, chain_pos=0, updated_at=to_db(utcnow())))
        return 0

    async def advance(self, name: str, position: int) -> None:
        """Move the cursor to ``position`` (never backwards: a replica that lost its lease cannot rewind it)."""
        c = audit_forwarders.c
        statement = (
            update(audit_forwarders)
            .where(c.name == name, c.chain_pos < position)
            .values(chain_pos=position, updated_at=to_db(utcnow()))
        )
        async with write_transaction(self._engine) as conn:
            await conn.execute(statement)

    async def sealed_after(self, position: int, limit: int) -> list[AccessRecord]:
        """Up to ``limit`` sealed records after ``position``, in chain order."""
        c = access_log.c
        query = select(access_log).where(c.chain_pos > position).order_by(c.chain_pos).limit(limit)
        async with read_transaction(self._engine) as conn:
            return [_record(row) for row in (await conn.execute(query)).mappings()]

    async def head(self) -> int:
        """The chain position of the newest sealed record (0 before the first)."""
        async with read_transaction(self._engine) as conn:
            return int((await conn.execute(select(func.max(access_log.c.chain_pos)))).scalar() or 0)

    async def purged_through(self) -> int:
        """The chain position of the last record retention deleted outright (0 if none was)."""
        async with read_transaction(self._engine) as conn:
            return int((await conn.execute(select(func.max(audit_anchor.c.chain_pos)))).scalar() or 0)

    def lease(self, name: str) -> Lease:
        if self._engine.dialect.name == "postgresql":
            return AdvisoryLease(self._engine, name)
        path = sqlite_file(self._engine.url)
        return FileLease(f"{path}.forwarder-{name}.lock") if path is not None else ProcessLease()


class Lease(Protocol):
    async def hold(self) -> bool:
        """Take the lease if it is free, or confirm it is still held; False while another replica has it."""

    async def release(self) -> None: ...


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key of its own for each forwarder name."""
    digest = hashlib.sha256(f"channelgate.audit.forwarder:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLease:
    """``pg_try_advisory_lock`` on a connection kept for it (in autocommit: no transaction stays open)."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self._engine = engine
        self._key = _lock_key(name)
        self._conn: AsyncConnection | None = None

    async def hold(self) -> bool:
        with storage_errors(self._engine, "forwarder lease"):
            if self._conn is not None:
                try:
                    # The lock lives as long as this session: if the session answers, the lock is still ours.
                    await self._conn.execute(text("SELECT 1"))
                    return True
                except Exception:
                    await self.release()
                    raise
            conn = await self._engine.connect()
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                taken = (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key})).scalar()
            except Exception:
                await conn.close()
                raise
            if not taken:
                await conn.close()
                return False
            self._conn = conn
            return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        except Exception:
            # The session may still hold the lock: never hand it back to the pool, end it (the server then
            # releases the lock; if the connection is already gone, so is the lock).
            with contextlib.suppress(Exception):
                await conn.invalidate()
        with contextlib.suppress(Exception):
            await conn.close()


class FileLease:
    """An exclusive ``flock`` on a file beside the SQLite database, released by the kernel if the process dies."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    async def hold(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the forwarder lock file {self._path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class ProcessLease:
    """An in-memory database lives in one process: the lease is always this one's."""

    async def hold(self) -> bool:
        return True

    async def release(self) -> None:
        return None
