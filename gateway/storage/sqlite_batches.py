"""Batched access-log inserts on SQLite, written by ``sqlite3`` itself, one transaction per batch.

The proxy queues one access-log record per request and the writer commits them in batches
(``gateway.audit.writer``). Measured on this machine, a batch of 50 records through SQLAlchemy and aiosqlite
costs ~38 µs of CPU per record, most of it in the event loop's thread (parameter processing, a round trip to
aiosqlite's thread per call); ``sqlite3`` with ready tuples ~18 µs including the chain's hashes. The gateway runs
this writer in a process of its own (``gateway.storage.sqlite_batch_process`` explains why).

The rows are exactly what SQLAlchemy would write: the timestamp in its SQLite ``DATETIME`` storage format and
``detail`` as JSON text, so both paths read back alike (tests/contracts/test_access_log_contract.py). Durability is
the gateway engine's: WAL, ``synchronous=FULL``, one ``BEGIN IMMEDIATE`` transaction per batch.

This module imports nothing heavier than ``sqlite3``: the writer process starts with it in ~50 ms.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import StorageError
from gateway.storage.sqlite_chain import ChainedInsert

#: Rows per INSERT statement. ``executemany`` steps its statement once per row, and ``sqlite3`` releases the GIL
#: around every step; a writer sharing its process with a busy event loop then waited for the GIL once per row.
#: One multi-row statement per chunk is stepped once (SQLite allows 250,000 parameters here; 128 rows of 25
#: columns use 3,200) and costs ~10 % less CPU per row besides.
CHUNK_ROWS = 128


def sqlite_datetime(moment: datetime) -> str:
    """SQLAlchemy's SQLite ``DATETIME`` storage of an aware moment (UTC, always six fraction digits), so every
    write path (SQLAlchemy's, ``sqlite_writer``'s, this batch writer's) stores the same text and text order stays
    time order."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(" ", "microseconds")[:26]


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...], rows: int) -> str:
    values = ", ".join(["(" + ", ".join("?" for _ in columns) + ")"] * rows)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}"  # noqa: S608 - names from our schema


class SqliteBatchWriter:
    """Appends rows of one table in one transaction per batch; one batch at a time.

    A batch is given as *values*: one tuple per record, in ``columns`` order, as ``operator.attrgetter(*columns)``
    reads them from the record (``time`` an aware datetime, ``detail`` a JSON-able value or None).
    """

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
        self._table = table
        self._columns = tuple(columns)
        self._time = self._columns.index("time") if "time" in self._columns else None
        self._detail = self._columns.index("detail") if "detail" in self._columns else None
        self._linked_columns = tuple(chain.columns) if chain is not None else self._columns
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

    def _rows(self, batch: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        rows = []
        #: ``detail`` as JSON text, per object: the records of one kept forward-auth answer share one ``detail``
        #: (gateway/forward_auth_memo.py), so a batch encodes it once, not per record (~1.6 µs each). Keyed by
        #: identity, which is unique here: every object keyed is alive in ``batch`` until this returns.
        texts: dict[int, str] = {}
        time, detail = self._time, self._detail
        for values in batch:
            row = list(values)
            if time is not None:
                row[time] = sqlite_datetime(row[time])
            if detail is not None:
                value = row[detail]
                text = texts.get(id(value))
                if text is None:
                    text = texts[id(value)] = json.dumps(value)  # SQLAlchemy's JSON writes None as 'null' too
                row[detail] = text
            rows.append(tuple(row))
        return rows

    def _insert(self, connection: sqlite3.Connection, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> None:
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            # The statement text depends only on the chunk's length: sqlite3's statement cache keeps it prepared.
            connection.execute(_insert_sql(self._table, columns, len(chunk)), [v for row in chunk for v in row])

    def write(self, batch: Sequence[Sequence[Any]]) -> None:
        """Commit ``batch`` in order, or raise ``StorageError`` with none of it written."""
        rows = self._rows(batch)
        with self._lock:
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    linked = self._chain.link(connection, rows) if self._chain is not None else None
                    if linked is None:
                        self._insert(connection, self._columns, rows)
                    else:
                        self._insert(connection, self._linked_columns, linked)
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                self.close()  # a fresh connection next time, whatever state this one is in
                raise StorageError(
                    f"database write failed on sqlite:///{self._path}", detail=f"{type(error).__name__}: {error}"
                ) from None

    def contains(self, values: Sequence[Any]) -> bool:
        """Whether a record with these values' time, kind and request id was committed (one index lookup on
        ``time``): how the writer process's parent learns whether a batch whose answer it lost was written."""
        columns = self._columns
        query = f"SELECT 1 FROM {self._table} WHERE time = ? AND kind = ? AND request_id IS ? LIMIT 1"  # noqa: S608
        moment, kind, request_id = (values[columns.index(name)] for name in ("time", "kind", "request_id"))
        with self._lock:
            try:
                found = self._connect().execute(query, (sqlite_datetime(moment), kind, request_id)).fetchone()
            except sqlite3.Error as error:
                self.close()
                raise StorageError(
                    f"database read failed on sqlite:///{self._path}", detail=f"{type(error).__name__}: {error}"
                ) from None
        return found is not None

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()


def sqlite_file(url: Any) -> str | None:
    """The file of a file-backed SQLite URL, else None (PostgreSQL, or an in-memory database)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return str(Path(url.database).expanduser())
