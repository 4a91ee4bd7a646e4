"""The access log: append-only, one row per proxied request or identity event, ordered by ``seq``.

There is no update or delete here on purpose: an audit trail that the gateway can rewrite proves nothing
(ASVS 5.0 §16.4). The chain columns are written empty; the sealer (``gateway/audit/chain.py``) fills them in
commit order, and only retention (``gateway/audit/retention.py``) removes content.
On PostgreSQL ``seq`` comes from a sequence, so concurrent writers may *commit* out of ``seq`` order: readers
that must see every record (exports, forwarders) follow ``chain_pos``, which is assigned in commit order.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import RowMapping, Select, String, and_, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import StorageError
from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_gate, write_transaction
from gateway.storage.limits import NUL, fit_text, length_of, needs_fitting
from gateway.storage.schema import access_log
from gateway.storage.sqlite_batch_process import BatchWriterProcess
from gateway.storage.sqlite_batches import sqlite_file

log = logging.getLogger("channelgate.audit")


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRecord:
    time: datetime
    #: "request", "login", "login_failed", "logout", "expired", "deprovision", ...
    kind: str
    #: Assigned by the database on append; None on a record not yet written.
    seq: int | None = None
    request_id: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    source_ip: str | None = None
    channel: str | None = None
    method: str | None = None
    #: The path with query keys only, never query values (personal data stays out of the log).
    path: str | None = None
    status: int | None = None
    decision: str | None = None
    reason: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    duration_ms: int | None = None
    actor: str | None = None
    detail: dict[str, Any] | None = None
    #: PIPA: whose personal data (a customer id from the route's rules) and what was done with it.
    subject: str | None = None
    action: str | None = None
    # Filled by the chain's sealer once the record committed (gateway/audit/chain.py); None until then.
    chain_pos: int | None = None
    content_hash: str | None = None
    prev_hash: str | None = None
    hash: str | None = None
    purged: bool = False
    #: On a purged stub: the hash of the removed content (gateway/audit/canonical.py).
    rest_hash: str | None = None


_COLUMNS = tuple(column.name for column in access_log.columns)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessQuery:
    """A search of the access log: every given filter must match. Results come newest first (by ``time``, then
    ``seq``), ``limit`` at a time; pass the last record of a page as ``before`` for the next (keyset paging: no
    OFFSET scans)."""

    agent_id: str | None = None
    #: The userName as recorded (for records of agents since deleted, or names never linked to an id).
    agent_name: str | None = None
    channel: str | None = None
    subject: str | None = None
    action: str | None = None
    decision: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: (time, seq) of the last record of the previous page.
    before: tuple[datetime, int] | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10_000:
            raise ValueError("limit must be between 1 and 10000")


def _record(row: RowMapping) -> AccessRecord:
    values = {name: row[name] for name in _COLUMNS}
    values["time"] = from_db(values["time"])
    return AccessRecord(**values)


#: The columns an INSERT writes (``seq`` comes from the database), in the order of a ``LogRow``.
INSERT_COLUMNS = tuple(name for name in _COLUMNS if name != "seq")
#: A record as it is queued and written: its values in ``INSERT_COLUMNS`` order (``time`` an aware datetime,
#: ``detail`` a JSON-able value). The batched request records travel as rows, not ``AccessRecord`` objects: a
#: frozen 26-field dataclass costs ~4 µs to build, the forward-auth answer memo builds a row from a kept template
#: in a fraction of that (gateway/forward_auth_memo.py).
LogRow = tuple[Any, ...]
_values: Callable[[AccessRecord], LogRow] = operator.attrgetter(*INSERT_COLUMNS)

#: The text columns, and the length of those that have one: fitted before every write (gateway/storage/limits.py).
#: Some of these values come from outside — a request for ``/chat/a%00b`` is logged with its path decoded; the
#: method nginx passes to forward-auth as ``X-Original-Method`` is the client's, whatever its length — and a batch
#: PostgreSQL refused for one of them was retried for ever: the queue filled and the gateway refused all traffic.
TEXTS: tuple[tuple[str, int | None], ...] = tuple(
    (column.name, length_of(column)) for column in access_log.columns if isinstance(column.type, String)
)


#: The ``detail`` key naming the fields ``fitted`` changed, so a reviewer knows which values are not as received.
FITTED = "fitted"


def fitted(record: AccessRecord) -> AccessRecord:
    """``record`` with its texts fitted to their columns (``fit_text``) and their names listed in its ``detail``
    under ``FITTED``; ``record`` itself when none needed it."""
    fits: dict[str, Any] = {
        name: fit_text(value, length) for name, length in TEXTS if needs_fitting(value := getattr(record, name), length)
    }
    if not fits:
        return record
    return replace(record, **fits, detail={**(record.detail or {}), FITTED: sorted(fits)})


#: ``TEXTS`` by position in a row.
_TEXTS_AT = tuple((INSERT_COLUMNS.index(name), length) for name, length in TEXTS)


def insert_values(record: AccessRecord) -> LogRow:
    """A record's row, its values fitted to their columns (:func:`fitted`). Every request's record goes through
    here: the texts are checked on the row already read (~0.5 µs), the record copied only when one needs it."""
    row = _values(record)
    for index, length in _TEXTS_AT:
        value = row[index]
        # needs_fitting, inlined: a call per text would double this loop's cost on every request.
        if value is not None and ((length is not None and len(value) > length) or NUL in value):
            return _values(fitted(record))
    return row


#: A row starts with these, in this order; what follows is the same for every request a memoised forward-auth
#: answer allows (gateway/forward_auth_memo.py keeps it).
ROW_HEAD = ("time", "kind", "request_id")
if INSERT_COLUMNS[: len(ROW_HEAD)] != ROW_HEAD:  # the schema's column order, checked where it is relied on
    raise RuntimeError(f"access_log's columns must start with {ROW_HEAD}, not {INSERT_COLUMNS[:3]}")


def insert_row(record: AccessRecord) -> dict[str, Any]:
    """The values an INSERT of ``record`` writes (``seq`` comes from the database), fitted to their columns."""
    row = asdict(fitted(record))
    del row["seq"]
    row["time"] = to_db(record.time)
    return row


class AccessLogRepository:
    def __init__(self, engine: AsyncEngine, *, busy_timeout_seconds: float = 5.0) -> None:
        self._engine = engine
        path = sqlite_file(engine.url)
        #: This process's write gate of the file (gateway.storage.database): its writers take turns.
        self._sqlite_gate = str(Path(path).resolve()) if path is not None else ""
        self._sqlite_batches = (
            None
            if path is None
            else BatchWriterProcess(
                path, access_log.name, INSERT_COLUMNS, busy_timeout_seconds=busy_timeout_seconds, chained=True
            )
        )
        #: (first row, last row, count) of the last batch whose transaction failed through SQLAlchemy: it may
        #: have committed all the same (the connection lost after COMMIT was sent, before its answer came back).
        self._unsure: tuple[LogRow, LogRow, int] | None = None

    def close(self) -> None:
        """Stop the batch writer's process (the engine is disposed by its owner)."""
        if self._sqlite_batches is not None:
            self._sqlite_batches.close()

    async def append(self, records: Iterable[AccessRecord], conn: AsyncConnection | None = None) -> list[AccessRecord]:
        """Insert ``records`` in order, in one transaction (or in ``conn``'s); return them as written: with ``seq``
        set, and fitted to their columns (:func:`fitted`)."""
        batch = [fitted(record) for record in records]
        if not batch:
            return []
        rows = [insert_row(record) for record in batch]
        statement = insert(access_log).returning(access_log.c.seq, sort_by_parameter_order=True)
        async with write_transaction(self._engine, conn) as c:
            seqs = (await c.execute(statement, rows)).scalars().all()
        return [
            replace(record, seq=seq, time=from_db(to_db(record.time))) for record, seq in zip(batch, seqs, strict=True)
        ]

    async def append_batch(self, records: Sequence[AccessRecord]) -> None:
        """``append_rows`` of these records."""
        await self.append_rows([insert_values(record) for record in records])

    async def append_rows(self, rows: Sequence[LogRow]) -> None:
        """Insert many records, given as rows, in order in one transaction, returning nothing: the fast path for
        the batched request records (no RETURNING, no per-row copies). On SQLite the rows go through ``sqlite3``
        in a process of its own (``gateway.storage.sqlite_batch_process``), chained as they are inserted. Elsewhere,
        after a failed write the next call first asks whether that batch committed after all (not writing it twice).
        """
        if not rows:
            return
        if self._sqlite_batches is not None:
            async with write_gate(self._sqlite_gate):
                await self._sqlite_batches.write(rows)
            return
        if self._unsure is not None:
            rows = await self._settle(rows)
            if not rows:
                return
        values = [dict(zip(INSERT_COLUMNS, row, strict=True)) | {"time": to_db(row[0])} for row in rows]
        try:
            async with write_transaction(self._engine) as c:
                await c.execute(insert(access_log), values)
        except StorageError:
            self._unsure = (rows[0], rows[-1], len(rows))
            raise

    async def _settle(self, rows: Sequence[LogRow]) -> Sequence[LogRow]:
        """``rows`` without the records of the unsure batch if that one did commit (a retry starts with it).

        A transaction commits whole or not at all, so its first and last records tell; the time index finds
        them, and (time, kind, request_id) names a request's record. Raises ``StorageError`` (the question kept
        for next time) when the database cannot be asked.
        """
        assert self._unsure is not None
        first, last, count = self._unsure
        committed = (
            len(rows) >= count
            and rows[0] == first
            and rows[count - 1] == last
            and await self._contains(first)
            and await self._contains(last)
        )
        self._unsure = None
        if committed:
            log.warning("%d access-log records committed although their write failed; not written again", count)
            return rows[count:]
        return rows

    async def _contains(self, row: LogRow) -> bool:
        moment, kind, request_id = row[: len(ROW_HEAD)]
        c = access_log.c
        same_request = c.request_id.is_(None) if request_id is None else c.request_id == request_id
        query = select(c.seq).where(c.time == to_db(moment), c.kind == kind, same_request).limit(1)
        async with read_transaction(self._engine) as connection:
            return (await connection.execute(query)).first() is not None

    async def tail(self, limit: int = 100, *, conn: AsyncConnection | None = None) -> list[AccessRecord]:
        """The newest ``limit`` records, newest last."""
        return await self._newest(select(access_log), limit, conn)

    async def after(self, seq: int, limit: int = 100, *, conn: AsyncConnection | None = None) -> list[AccessRecord]:
        """Up to ``limit`` records with a ``seq`` greater than ``seq``, oldest first (for tailing exports)."""
        query = select(access_log).where(access_log.c.seq > seq).order_by(access_log.c.seq).limit(limit)
        async with read_transaction(self._engine, conn) as c:
            return [_record(row) for row in (await c.execute(query)).mappings()]

    async def for_agent(
        self, agent_id: str, limit: int = 100, *, conn: AsyncConnection | None = None
    ) -> list[AccessRecord]:
        """The agent's newest ``limit`` records, newest last."""
        return await self._newest(select(access_log).where(access_log.c.agent_id == agent_id), limit, conn)

    async def search(self, query: AccessQuery, *, conn: AsyncConnection | None = None) -> list[AccessRecord]:
        """Records matching ``query``, newest first. With an agent or a subject and a time range this is one
        index range scan (``ix_access_log_agent_time``, ``ix_access_log_subject_time``)."""
        c = access_log.c
        conditions = [
            column == value
            for column, value in (
                (c.agent_id, query.agent_id),
                (c.agent_name, query.agent_name),
                (c.channel, query.channel),
                (c.subject, query.subject),
                (c.action, query.action),
                (c.decision, query.decision),
                (c.kind, query.kind),
            )
            if value is not None
        ]
        if query.since is not None:
            conditions.append(c.time >= to_db(query.since))
        if query.until is not None:
            conditions.append(c.time < to_db(query.until))
        if query.before is not None:
            moment, seq = to_db(query.before[0]), query.before[1]
            conditions.append(or_(c.time < moment, and_(c.time == moment, c.seq < seq)))
        statement = select(access_log).where(*conditions).order_by(c.time.desc(), c.seq.desc()).limit(query.limit)
        async with read_transaction(self._engine, conn) as c2:
            return [_record(row) for row in (await c2.execute(statement)).mappings()]

    async def _newest(self, query: Select[Any], limit: int, conn: AsyncConnection | None) -> list[AccessRecord]:
        query = query.order_by(access_log.c.seq.desc()).limit(limit)
        async with read_transaction(self._engine, conn) as c:
            records = [_record(row) for row in (await c.execute(query)).mappings()]
        records.reverse()
        return records
