"""Batched access-log inserts on SQLite, written by ``sqlite3`` in a worker thread.

The proxy queues one access-log record per request and the writer commits them in batches
(``gateway.audit.writer``). Measured on this machine, a batch of 50 records through SQLAlchemy and aiosqlite
costs ~38 µs of CPU per record, most of it in the event loop's thread (parameter processing, a round trip to
aiosqlite's thread per call); ``sqlite3.executemany`` of ready tuples costs ~8 µs, in a thread of its own. At
two thousand requests a second that difference was a third of the inline proxy's CPU (docs/benchmarks.md §1).

The rows are exactly what SQLAlchemy would write: the timestamp in its SQLite ``DATETIME`` storage format and
``detail`` as JSON text, so both paths read back alike (tests/contracts/test_access_log_contract.py). Durability is
the gateway engine's: WAL, ``synchronous=FULL``, one ``BEGIN IMMEDIATE`` transaction per batch.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from gateway.errors import StorageError
from gateway.storage.database import write_gate
from gateway.storage.sqlite_chain import ChainedInsert


def _timestamp(record: Any) -> str:
    moment = record.time.astimezone(UTC)
    # SQLAlchemy's SQLite DATETIME storage format (always six fraction digits), so text order is time order.
    return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond:06d}"


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"  # noqa: S608 - names from our schema


class SqliteBatchWriter:
    """Appends rows of one table in one transaction per batch, off the event loop; one batch at a time."""

    def __init__(
        self,
        path: str,
        table: str,
        columns: Sequence[str],
        *,
        busy_timeout_seconds: float,
        chain: ChainedInsert | None = None,
    ) -> None:
        self._path = path
        #: The access log's rows are chained as they are inserted when they can be (gateway/storage/sqlite_chain.py).
        self._chain = chain
        self._resolved = str(Path(path).resolve())
        self._columns = tuple(columns)
        self._sql = _insert_sql(table, self._columns)
        self._linked_sql = _insert_sql(table, chain.columns if chain is not None else self._columns)
        self._busy_timeout = busy_timeout_seconds
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA synchronous=FULL")  # as the gateway's engine: an audit record must survive
            self._connection = connection
        return self._connection

    def _row(self, record: Any) -> tuple[Any, ...]:
        values = []
        for name in self._columns:
            if name == "time":
                values.append(_timestamp(record))
            elif name == "detail":
                values.append(json.dumps(record.detail))  # SQLAlchemy's JSON type writes None as 'null' too
            else:
                values.append(getattr(record, name))
        return tuple(values)

    def _write(self, records: Sequence[Any]) -> None:
        rows = [self._row(record) for record in records]
        with self._lock:
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    linked = self._chain.link(connection, rows) if self._chain is not None else None
                    if linked is None:
                        connection.executemany(self._sql, rows)
                    else:
                        connection.executemany(self._linked_sql, linked)
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                self.close()  # a fresh connection next time, whatever state this one is in
                raise StorageError(
                    f"database write failed on sqlite:///{self._path}", detail=f"{type(error).__name__}: {error}"
                ) from None

    async def append(self, records: Sequence[Any]) -> None:
        """Commit ``records`` in order, or raise ``StorageError`` with none of them written."""
        async with write_gate(self._resolved):
            await asyncio.to_thread(self._write, records)

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()


def sqlite_file(url: Any) -> str | None:
    """The file of a file-backed SQLite URL, else None (PostgreSQL, or an in-memory database)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return str(Path(url.database).expanduser())
