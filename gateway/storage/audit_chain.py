"""The access log's chain in the database: sealing committed records, reading them back in chain order,
checkpoints and the purge anchor.

Sealing is one transaction per batch under one lock (``BEGIN IMMEDIATE`` on SQLite; a transaction-scoped advisory
lock on PostgreSQL, so replicas take turns): read the head, read the oldest unsealed rows, write their chain
columns. Rows are read as the driver returns them (``text()`` statements: no type processing), the same way
``audit verify`` reads them, so both hash the same values.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.canonical import FIELDS, GENESIS, PREFIX, REST_FIELDS, content_hash, link_hash, rest_hash
from gateway.storage._time import from_db, to_db
from gateway.storage.access_log import AccessRecord, insert_row
from gateway.storage.database import read_transaction, worker_dsn, write_transaction
from gateway.storage.schema import access_log, audit_anchor, audit_checkpoints
from gateway.storage.sqlite_batches import sqlite_file
from gateway.storage.sqlite_chain import HEAD_SQL

#: pg_advisory_xact_lock key of the chain (any constant unique to channelgate: "cg" "ch" "ai" "n").
_PG_CHAIN_LOCK = 0x63676368_61696E
#: Columns a verifier reads, in this order: the content (canonical order), then the chain's own.
CHAIN_COLUMNS = ("chain_pos", "content_hash", "prev_hash", "hash", "purged", "rest_hash")
_ROW_COLUMNS = ", ".join((*FIELDS, *CHAIN_COLUMNS))
_UNSEALED = text(
    f"SELECT {', '.join(FIELDS)} FROM access_log WHERE chain_pos IS NULL ORDER BY seq LIMIT :limit"  # noqa: S608 - our column names
)
_STILL_UNSEALED = text("SELECT seq FROM access_log WHERE chain_pos IS NULL AND seq IN :seqs").bindparams(
    bindparam("seqs", expanding=True)
)
_HEAD = text(HEAD_SQL)
_BY_POS = text(
    f"SELECT {_ROW_COLUMNS} FROM access_log WHERE chain_pos > :after AND chain_pos <= :until "  # noqa: S608 - our column names
    "ORDER BY chain_pos LIMIT :limit"
)
_BY_POS_SQL = (
    f"SELECT {_ROW_COLUMNS} FROM access_log WHERE chain_pos > {{0}} AND chain_pos <= {{1}} "  # noqa: S608 - our column names
    "ORDER BY chain_pos LIMIT {2}"
)
_BY_POS_SQLITE = _BY_POS_SQL.format("?", "?", "?")
# PostgreSQL formats the time in its canonical text itself (the form gateway.audit.canonical.canonical_time
# gives a datetime): a million datetime objects built and formatted again in Python were a quarter of a verify.
_PG_TIME = "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_BY_POS_PG = _BY_POS_SQL.format("$1", "$2", "$3").replace("SELECT seq, time,", f"SELECT seq, {_PG_TIME},", 1)
_POS_OF_SEQ = text("SELECT chain_pos FROM access_log WHERE seq = :seq")
_FIRST_SEALED = text("SELECT MIN(chain_pos) FROM access_log WHERE chain_pos IS NOT NULL")
_UNSEALED_COUNT = text("SELECT COUNT(*), MIN(time) FROM access_log WHERE chain_pos IS NULL")
_SEAL = (
    update(access_log)
    .where(access_log.c.seq == bindparam("b_seq"))
    .values(
        chain_pos=bindparam("b_pos"),
        content_hash=bindparam("b_content"),
        prev_hash=bindparam("b_prev"),
        hash=bindparam("b_hash"),
    )
)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest sealed record (position 0 and the genesis hash before the first)."""

    chain_pos: int
    hash: str
    seq: int | None


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a purge cut the chain: the last record deleted outright."""

    chain_pos: int
    hash: str
    purged_at: datetime


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    number: int
    chain_pos: int
    seq: int
    hash: str
    time: datetime
    key_id: str
    document: str
    delivered_at: datetime | None


def row_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A row of ``rows_after`` as a mapping of column name → raw value."""
    return dict(zip((*FIELDS, *CHAIN_COLUMNS), row, strict=True))


class ChainStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._sqlite_path = sqlite_file(engine.url)
        self._sqlite_reader: sqlite3.Connection | None = None
        self._sqlite_lock = threading.Lock()

    async def _lock(self, conn: AsyncConnection) -> None:
        if self._postgres:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHAIN_LOCK})

    async def _head(self, conn: AsyncConnection) -> ChainHead:
        row = (await conn.execute(_HEAD)).first()
        if row is not None:
            return ChainHead(int(row[0]), str(row[1]), int(row[2]))
        anchor = await self.anchor(conn=conn)
        if anchor is not None:
            return ChainHead(anchor.chain_pos, anchor.hash, None)
        return ChainHead(0, GENESIS, None)

    async def head(self) -> ChainHead:
        async with read_transaction(self._engine) as conn:
            return await self._head(conn)

    async def seal(self, limit: int) -> tuple[int, ChainHead]:
        """Chain the oldest ``limit`` unsealed records after the head; return how many and the new head.

        The content hashes (the costly part, ~3 µs a record) are computed before the chain lock is taken and off
        the event loop; under the lock only the links are, for the rows still unsealed then (another process may
        have sealed some meanwhile: a replica, or ``channelgate deprovision work`` beside a gateway).
        """
        async with read_transaction(self._engine) as conn:
            rows = (await conn.execute(_UNSEALED, {"limit": limit})).all()
        if not rows:
            return 0, await self.head()
        contents = await asyncio.to_thread(lambda: [(int(row[0]), content_hash(row)) for row in rows])
        async with write_transaction(self._engine) as conn:
            await self._lock(conn)
            head = await self._head(conn)
            still = set((await conn.execute(_STILL_UNSEALED, {"seqs": [seq for seq, _ in contents]})).scalars().all())
            prev, pos, last, updates = head.hash, head.chain_pos, head.seq, []
            for seq, content in contents:
                if seq not in still:
                    continue
                pos, last = pos + 1, seq
                digest = link_hash(prev, pos, content)
                updates.append({"b_seq": seq, "b_pos": pos, "b_content": content, "b_prev": prev, "b_hash": digest})
                prev = digest
            if updates:
                await conn.execute(_SEAL, updates)
            return len(updates), ChainHead(pos, prev, last)

    async def unsealed(self) -> tuple[int, datetime | None]:
        """How many committed records wait for the sealer, and the time of the oldest."""
        async with read_transaction(self._engine) as conn:
            count, oldest = (await conn.execute(_UNSEALED_COUNT)).one()
        if oldest is None:
            return int(count), None
        return int(count), from_db(datetime.fromisoformat(oldest) if isinstance(oldest, str) else oldest)

    async def rows_after(self, after: int, until: int, limit: int) -> list[Sequence[Any]]:
        """Sealed rows with ``after < chain_pos <= until``, in chain order, as the driver returns them.

        A verification reads every row of the log, so this skips SQLAlchemy's result rows: ``sqlite3`` in a
        worker thread on a read-only connection, or asyncpg's own ``fetch`` (the same values either way)."""
        if self._sqlite_path is not None:
            return await asyncio.to_thread(self._sqlite_rows, after, until, limit)
        async with read_transaction(self._engine) as conn:
            if self._postgres:
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection
                return list(await driver.fetch(_BY_POS_PG, after, until, limit))
            return list((await conn.execute(_BY_POS, {"after": after, "until": until, "limit": limit})).all())

    def worker_target(self) -> tuple[str, str] | None:
        """Where a worker process reads this database: ("sqlite", file) or ("postgresql", DSN); None for an
        in-memory database."""
        if self._sqlite_path is not None:
            return "sqlite", self._sqlite_path
        if self._postgres:
            return "postgresql", worker_dsn(self._engine)
        return None

    @property
    def by_position_statement(self) -> str:
        """The driver-level statement ``rows_after`` runs (``?`` or ``$n`` placeholders)."""
        return _BY_POS_SQLITE if self._sqlite_path is not None else _BY_POS_PG

    def _sqlite_rows(self, after: int, until: int, limit: int) -> list[Sequence[Any]]:
        with self._sqlite_lock:
            if self._sqlite_reader is None:
                reader = sqlite3.connect(f"file:{self._sqlite_path}?mode=ro", uri=True, check_same_thread=False)
                self._sqlite_reader = reader
            cursor = self._sqlite_reader.execute(_BY_POS_SQLITE, (after, until, limit))
            try:
                return cursor.fetchall()
            finally:
                cursor.close()

    def close(self) -> None:
        """Close the direct SQLite reader (the engine is closed by its owner)."""
        with self._sqlite_lock:
            if self._sqlite_reader is not None:
                self._sqlite_reader.close()
                self._sqlite_reader = None

    async def position_of(self, seq: int) -> int | None:
        async with read_transaction(self._engine) as conn:
            value = (await conn.execute(_POS_OF_SEQ, {"seq": seq})).scalar()
        return None if value is None else int(value)

    async def first_position(self) -> int | None:
        async with read_transaction(self._engine) as conn:
            value = (await conn.execute(_FIRST_SEALED)).scalar()
        return None if value is None else int(value)

    async def anchor(self, *, conn: AsyncConnection | None = None) -> Anchor | None:
        async with read_transaction(self._engine, conn) as c:
            row = (await c.execute(select(audit_anchor).where(audit_anchor.c.id == 1))).mappings().first()
        if row is None:
            return None
        return Anchor(int(row["chain_pos"]), str(row["hash"]), from_db(row["purged_at"]))

    # Checkpoints --------------------------------------------------------------------------------------------

    async def add_checkpoint(
        self, make: Callable[[int, ChainHead, str | None], tuple[str, str]], *, force: bool, at: datetime
    ) -> CheckpointRow | None:
        """Under the chain lock: if the head moved past the last checkpoint (or ``force``), let ``make(number,
        head, previous_document)`` build the signed document (and name its key) and store it; return the new row."""
        async with write_transaction(self._engine) as conn:
            await self._lock(conn)
            head = await self._head(conn)
            last = await self._last_checkpoint(conn)
            if head.seq is None and head.chain_pos == 0:
                return None
            if last is not None and last.chain_pos >= head.chain_pos and not force:
                return None
            number = 1 if last is None else last.number + 1
            document, key_id = make(number, head, None if last is None else last.document)
            row = CheckpointRow(number, head.chain_pos, head.seq or 0, head.hash, at, key_id, document, None)
            await conn.execute(
                insert(audit_checkpoints).values(
                    number=row.number,
                    chain_pos=row.chain_pos,
                    seq=row.seq,
                    hash=row.hash,
                    time=to_db(at),
                    key_id=row.key_id,
                    document=row.document,
                )
            )
            return row

    async def _last_checkpoint(self, conn: AsyncConnection) -> CheckpointRow | None:
        row = (
            (await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.number.desc()).limit(1)))
            .mappings()
            .first()
        )
        return None if row is None else _checkpoint(row)

    async def last_checkpoint(self) -> CheckpointRow | None:
        async with read_transaction(self._engine) as conn:
            return await self._last_checkpoint(conn)

    async def undelivered(self, limit: int = 100) -> list[CheckpointRow]:
        query = (
            select(audit_checkpoints)
            .where(audit_checkpoints.c.delivered_at.is_(None))
            .order_by(audit_checkpoints.c.number)
            .limit(limit)
        )
        async with read_transaction(self._engine) as conn:
            return [_checkpoint(row) for row in (await conn.execute(query)).mappings()]

    async def mark_delivered(self, number: int, at: datetime) -> None:
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                update(audit_checkpoints).where(audit_checkpoints.c.number == number).values(delivered_at=to_db(at))
            )

    async def checkpoints(self) -> list[CheckpointRow]:
        async with read_transaction(self._engine) as conn:
            query = select(audit_checkpoints).order_by(audit_checkpoints.c.number)
            return [_checkpoint(row) for row in (await conn.execute(query)).mappings()]


def _checkpoint(row: Any) -> CheckpointRow:
    delivered = row["delivered_at"]
    return CheckpointRow(
        int(row["number"]),
        int(row["chain_pos"]),
        int(row["seq"]),
        str(row["hash"]),
        from_db(row["time"]),
        str(row["key_id"]),
        str(row["document"]),
        None if delivered is None else from_db(delivered),
    )


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    stubbed: int
    deleted: int
    anchor: Anchor | None


#: The content a purge removes (everything but what keeps the chain verifiable: seq, time, kind and the chain).
PURGED_COLUMNS = REST_FIELDS
#: The records to stub, read raw as ``audit verify`` reads them (their ``rest_hash`` must be what it recomputes).
_STUB_ROWS = text(
    f"SELECT {', '.join(FIELDS)}, content_hash FROM access_log WHERE seq IN :seqs"  # noqa: S608 - our column names
).bindparams(bindparam("seqs", expanding=True))
_STUB = (
    update(access_log)
    .where(access_log.c.seq == bindparam("b_seq"))
    .values(purged=True, rest_hash=bindparam("b_rest"), **dict.fromkeys(PURGED_COLUMNS))
)


def _stubs(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """The stub of each row: its ``rest_hash`` — which, with the head the stub keeps, gives back its
    ``content_hash`` — or None for a record of format cg1, whose hash covers everything at once."""
    return [
        {"b_seq": row[0], "b_rest": rest_hash(row) if str(row[len(FIELDS)]).startswith(PREFIX) else None}
        for row in rows
    ]


class ChainPurger:
    """Retention's database work, in one transaction under the chain lock (``gateway.audit.retention``)."""

    def __init__(self, store: ChainStore) -> None:
        self._store = store
        self._engine = store._engine

    async def purge(
        self,
        *,
        content_before: datetime,
        delete_before: datetime,
        keep_content_kinds: frozenset[str],
        limit: int,
        record: Callable[[Anchor | None, int, int], AccessRecord],
        at: datetime,
    ) -> PurgeCounts:
        """Stub sealed records older than ``content_before`` (except ``keep_content_kinds``), delete the chain's
        prefix older than ``delete_before`` and move the anchor there; ``record(anchor, stubbed, deleted)`` gives
        the access record that vouches for the new anchor, inserted in the same transaction."""
        c = access_log.c
        async with write_transaction(self._engine) as conn:
            await self._store._lock(conn)
            # The prefix to delete: every record before the first one young enough to keep.
            first_kept = (
                await conn.execute(
                    select(c.chain_pos)
                    .where(c.chain_pos.is_not(None), c.time >= to_db(delete_before))
                    .order_by(c.chain_pos)
                    .limit(1)
                )
            ).scalar()
            head = await self._store._head(conn)
            end = (int(first_kept) - 1) if first_kept is not None else head.chain_pos - 1  # the head always stays
            current = await self._store.anchor(conn=conn)
            start = current.chain_pos if current is not None else 0
            end = min(end, start + limit)
            deleted = 0
            anchor = current
            if end > start:
                last = (await conn.execute(select(c.hash).where(c.chain_pos == end))).scalar()
                if last is not None:
                    anchor = Anchor(end, str(last), at)
                    result = await conn.execute(access_log.delete().where(c.chain_pos.is_not(None), c.chain_pos <= end))
                    deleted = int(result.rowcount or 0)
                    values = {"chain_pos": anchor.chain_pos, "hash": anchor.hash, "purged_at": to_db(at)}
                    if current is None:
                        await conn.execute(insert(audit_anchor).values(id=1, **values))
                    else:
                        await conn.execute(update(audit_anchor).where(audit_anchor.c.id == 1).values(**values))
            # Stubs: oldest first, at most ``limit`` per pass (a pass holds the chain lock).
            stub_seqs = (
                (
                    await conn.execute(
                        select(c.seq)
                        .where(
                            c.chain_pos.is_not(None),
                            c.purged.is_(False),
                            c.time < to_db(content_before),
                            c.kind.not_in(sorted(keep_content_kinds)),
                        )
                        .order_by(c.chain_pos)
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            if stub_seqs:
                rows = (await conn.execute(_STUB_ROWS, {"seqs": list(stub_seqs)})).all()
                await conn.execute(_STUB, await asyncio.to_thread(_stubs, rows))
            if stub_seqs or deleted:
                await conn.execute(insert(access_log).values(insert_row(record(anchor, len(stub_seqs), deleted))))
            return PurgeCounts(len(stub_seqs), deleted, anchor)
