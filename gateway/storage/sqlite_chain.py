"""Access-log batches on SQLite chained as they are inserted, in the batch writer's own transaction.

The sealer (gateway/audit/chain.py) chains records after they commit: it reads them back, hashes them and writes
their chain columns in a second transaction. On SQLite the batch writer already holds the database's only write
lock (``BEGIN IMMEDIATE``) while it inserts, so nothing can commit between the chain's head and its rows: it can
link its rows right there and insert them with their chain columns. Measured with the forward-auth benchmark
(docs/benchmarks.md §8), the second pass — rows read back through SQLAlchemy and aiosqlite, then updated one by
one — cost more CPU per request than the whole decision; written once, a record costs its hash and one insert.

The order is still commit order, as the sealer would give it. Records committed unsealed by other writers (a
strict record written through SQLAlchemy, the deprovisioning pipeline's writer, another process on the same file)
are older than the batch: the batch writer seals them first, in ``seq`` order — commit order on SQLite, where one
writer at a time holds the lock and a new row's ``seq`` is the largest + 1 — up to ``CATCH_UP`` of them, then links
its own rows after them. Before it did, a batch met with any older unsealed record went in unsealed itself; under
load the sealer (SQLAlchemy, holding the write lock ~0.1-0.7 s a pass) then never caught up, every later batch
went in unsealed too, and the batches queued behind the sealer's turns until the gateway refused traffic.
When more than ``CATCH_UP`` wait, the batch goes in unsealed after them and the next batch goes on sealing.
The hashes are computed from exactly the values inserted or read, which are the values ``audit verify`` reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.audit.canonical import FIELDS, GENESIS, content_hash, link_hash

#: The newest sealed record: the chain's head (ChainStore._head reads the same).
HEAD_SQL = "SELECT chain_pos, hash, seq FROM access_log WHERE chain_pos IS NOT NULL ORDER BY chain_pos DESC LIMIT 1"
#: Where a purge cut the chain, for a log whose every sealed record was deleted.
ANCHOR_SQL = "SELECT chain_pos, hash FROM audit_anchor WHERE id = 1"
#: Older records a batch seals before its own, at most (~6 µs each).
CATCH_UP = 2000
#: The oldest records committed but not chained yet (the partial index ix_access_log_unsealed answers it).
_UNSEALED_ROWS = f"SELECT {', '.join(FIELDS)} FROM access_log WHERE chain_pos IS NULL ORDER BY seq LIMIT ?"  # noqa: S608
_SEAL_ROW = "UPDATE access_log SET chain_pos = ?, content_hash = ?, prev_hash = ?, hash = ? WHERE seq = ?"
#: ``seq`` is SQLite's rowid (INTEGER PRIMARY KEY, no AUTOINCREMENT): a new row gets max + 1, as here.
_LAST_SEQ = "SELECT max(seq) FROM access_log"
_CHAIN_COLUMNS = ("chain_pos", "content_hash", "prev_hash", "hash")


class ChainedInsert:
    """Links rows given in ``columns`` order (every column but ``seq``, the chain's still empty): ``seq`` in
    front, the chain columns filled in."""

    def __init__(self, columns: Sequence[str]) -> None:
        missing = {*FIELDS, *_CHAIN_COLUMNS} - {"seq", *columns}
        if missing:
            raise ValueError(f"the batch writer's columns lack {sorted(missing)}")
        #: For each of FIELDS after seq: where its value is in a row.
        self._order = tuple(columns.index(name) for name in FIELDS[1:])
        #: Where chain_pos, content_hash, prev_hash and hash go (one after the other, as in the schema).
        self._links = columns.index(_CHAIN_COLUMNS[0])
        if tuple(columns[self._links : self._links + len(_CHAIN_COLUMNS)]) != _CHAIN_COLUMNS:
            raise ValueError(f"the chain columns must follow each other in the order {_CHAIN_COLUMNS}")
        #: The columns of a linked row.
        self.columns = ("seq", *columns)

    def link(self, connection: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]] | None:
        """``rows`` chained after the head, for the caller's write transaction to insert, once the older unsealed
        records are sealed in that transaction; None when more than ``CATCH_UP`` of them waited (then the rows go
        in unsealed, after them)."""
        head = connection.execute(HEAD_SQL).fetchone() or connection.execute(ANCHOR_SQL).fetchone()
        position, previous = (int(head[0]), str(head[1])) if head is not None else (0, GENESIS)
        older = connection.execute(_UNSEALED_ROWS, (CATCH_UP + 1,)).fetchall()
        if older:
            seals = []
            for row in older[:CATCH_UP]:
                position += 1
                content = content_hash(row)
                digest = link_hash(previous, position, content)
                seals.append((position, content, previous, digest, row[0]))
                previous = digest
            connection.executemany(_SEAL_ROW, seals)
            if len(older) > CATCH_UP:
                return None
        seq = int(connection.execute(_LAST_SEQ).fetchone()[0] or 0)
        order, links, after = self._order, self._links, self._links + len(_CHAIN_COLUMNS)
        linked = []
        for row in rows:
            seq += 1
            position += 1
            content = content_hash([seq, *[row[index] for index in order]])
            digest = link_hash(previous, position, content)
            linked.append((seq, *row[:links], position, content, previous, digest, *row[after:]))
            previous = digest
        return linked
