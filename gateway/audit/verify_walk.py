"""The per-record walk of ``audit verify``, and its parallel form: segments of the chain checked by worker
processes.

Hashing is what verification costs (~3 µs a record for the canonical form and two SHA-256), and it is CPU-bound
Python: one process verifies about 150,000 records a second here. The chain's links do not need the previous
segment to be hashed first — every record stores its predecessor's hash — so the chain is cut into one segment per
core, each worker walks its segment exactly as the single walk would (starting from the ``prev_hash`` its first
record names), and the caller then checks that each segment starts where the previous one ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.canonical import (
    FIELDS,
    HEAD_FIELDS,
    PREFIX,
    canonical_detail,
    canonical_time,
    content_matches,
    head_hash,
    link_hash,
)
from gateway.audit.kinds import GRANT_KINDS, PURGE_KIND

PAGE = 20_000
_SEQ, _TIME, _KIND, _DETAIL = (FIELDS.index(name) for name in ("seq", "time", "kind", "detail"))
_POS, _CONTENT, _PREV, HASH, _PURGED, _REST = range(len(FIELDS), len(FIELDS) + 6)
_EMPTIED = range(len(HEAD_FIELDS), len(FIELDS))
#: A ``rest_hash``: unpadded base64url of a SHA-256 digest.
_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Records newer than these (canonical times) must still have their content: ``content`` for access records,
    ``grants`` for the kinds retention keeps longer (``GRANT_KINDS``)."""

    content: str
    grants: str


#: Reads the rows with ``after < chain_pos <= until``, at most ``limit``, in chain order.
RowReader = Callable[[int, int, int], Awaitable[list[Sequence[Any]]]]


@dataclass(slots=True)
class Walk:
    """What a walk over (``after``, ``until``] saw."""

    checked: int = 0
    purged: int = 0
    #: Stubs of records written before format cg2: only their link could be checked.
    legacy_stubs: int = 0
    first_seq: int | None = None
    first_pos: int | None = None
    #: (seq, chain_pos, prev_hash) of the first record read, checked or not (a segment's seam).
    head: tuple[int, int, str] | None = None
    last_seq: int | None = None
    last_pos: int | None = None
    last_hash: str | None = None
    #: (seq, chain_pos, message) of the first bad record.
    problem: tuple[int, int, str] | None = None
    #: (anchor_pos, anchor_hash) named by each purge record met.
    anchors: list[tuple[int, str]] = field(default_factory=list)


def check_row(
    row: Sequence[Any], pos: int, expected: int, prev: str | None, signed: Mapping[int, tuple[int, str, str]],
    cutoffs: Cutoffs | None,
) -> str | None:  # fmt: skip
    """What is wrong with one record, or None. ``prev`` None: trust the record's own ``prev_hash`` (a segment's
    first record; the caller checks that link). ``signed``: chain_pos → (checkpoint number, hash, time)."""
    if pos != expected:
        return f"chain position {expected} is missing before this record (deleted)"
    if prev is not None and row[_PREV] != prev:
        return "its predecessor is not the record the chain names (a record was inserted, deleted or moved)"
    content = str(row[_CONTENT])
    if row[_PURGED]:
        problem = _check_stub(row, content, cutoffs)
        if problem is not None:
            return problem
    elif not content_matches(row[: len(FIELDS)], content):
        return "the record was altered (its content no longer matches its hash)"
    if link_hash(str(row[_PREV]), pos, content) != row[HASH]:
        return "the chain hash was altered"
    checkpoint = signed.get(pos)
    if checkpoint is not None and checkpoint[1] != row[HASH]:
        return f"differs from what checkpoint {checkpoint[0]} signed at {checkpoint[2]}"
    return None


def _check_stub(row: Sequence[Any], content: str, cutoffs: Cutoffs | None) -> str | None:
    """A purged stub must have been due for purging, its content must be gone, and its head (seq, time, kind) and
    ``rest_hash`` must still give its ``content_hash`` — so a time moved back to look due, a changed kind, or an
    edited record flagged as purged shows. A legacy (cg1) stub proves only its link (counted by the caller)."""
    if cutoffs is not None:
        cutoff = cutoffs.grants if row[_KIND] in GRANT_KINDS else cutoffs.content
        if canonical_time(row[_TIME]) >= cutoff:
            return "the record's content was removed before its retention period ended"
    if any(row[index] is not None for index in _EMPTIED if index != _DETAIL) or canonical_detail(row[_DETAIL]):
        return "the record is marked purged but still has content (altered after its purge, or never purged)"
    if content.startswith(PREFIX):
        rest = row[_REST]
        if not isinstance(rest, str) or len(rest) != 43 or not _B64.issuperset(rest):
            return "the purged record's rest hash is missing or malformed (altered)"
        if head_hash(row[_SEQ], row[_TIME], row[_KIND], rest) != content:
            return "the purged record's seq, time or kind was altered (they no longer match its hash)"
    return None


async def walk(
    read: RowReader, after: int, until: int, prev: str | None, signed: Mapping[int, tuple[int, str, str]],
    cutoffs: Cutoffs | None,
) -> Walk:  # fmt: skip
    """Check every record of (``after``, ``until``] in chain order; stop at the first bad one. The next page is
    read while this one is hashed."""
    seen = Walk()
    expected = after + 1
    upcoming: asyncio.Future[list[Sequence[Any]]] | None = (
        asyncio.ensure_future(read(after, until, PAGE)) if after < until else None
    )
    while upcoming is not None:
        rows = await upcoming
        upcoming = None
        if not rows:
            break
        last = int(rows[-1][_POS])
        if last < until:
            upcoming = asyncio.ensure_future(read(last, until, PAGE))
        for row in rows:
            pos, seq = int(row[_POS]), int(row[_SEQ])
            if seen.head is None:
                seen.head = (seq, pos, str(row[_PREV]))
            found = check_row(row, pos, expected, prev, signed, cutoffs)
            if found is not None:
                seen.problem = (seq, pos, found)
                if upcoming is not None:
                    upcoming.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await upcoming
                return seen
            if row[_KIND] == PURGE_KIND and not row[_PURGED]:
                # Only a purge record whose content verified vouches for an anchor (retention never empties one).
                detail = canonical_detail(row[_DETAIL]) or {}
                seen.anchors.append((int(detail.get("anchor_pos", -1)), str(detail.get("anchor_hash"))))
            if seen.first_seq is None:
                seen.first_seq, seen.first_pos = seq, pos
            seen.checked += 1
            seen.purged += bool(row[_PURGED])
            seen.legacy_stubs += bool(row[_PURGED]) and not str(row[_CONTENT]).startswith(PREFIX)
            prev, expected = str(row[HASH]), pos + 1
            seen.last_seq, seen.last_pos, seen.last_hash = seq, pos, prev
    return seen


# Worker processes ---------------------------------------------------------------------------------------------


def _sqlite_reader(path: str, statement: str) -> RowReader:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    async def read(after: int, until: int, limit: int) -> list[Sequence[Any]]:
        return connection.execute(statement, (after, until, limit)).fetchall()

    return read


def walk_segment(
    database: tuple[str, str], statement: str, after: int, until: int, signed: Mapping[int, tuple[int, str, str]],
    cutoffs: Cutoffs | None,
) -> Walk:  # fmt: skip
    """In a worker process: walk (``after``, ``until``] of the database (("sqlite", file) or ("postgresql",
    DSN)), trusting the first record's ``prev_hash`` (the caller checks the seams)."""

    async def run() -> Walk:
        kind, where = database
        if kind == "sqlite":
            return await walk(_sqlite_reader(where, statement), after, until, None, signed, cutoffs)
        import asyncpg  # only PostgreSQL workers need it

        from gateway.storage.postgres_options import worker_connect_kwargs

        connection = await asyncpg.connect(**worker_connect_kwargs(where))
        try:

            async def read(start: int, end: int, limit: int) -> list[Sequence[Any]]:
                return list(await connection.fetch(statement, start, end, limit))

            return await walk(read, after, until, None, signed, cutoffs)
        finally:
            await connection.close()

    return asyncio.run(run())
