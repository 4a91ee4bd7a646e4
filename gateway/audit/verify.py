"""``channelgate audit verify``: prove the access log was not edited, or name the first record that was.

The walk follows the chain from its start (position 1, or the purge anchor) to its head and checks, per record:
its position follows the previous one (else a record was deleted), its ``prev_hash`` is the previous record's
hash (else one was inserted, deleted or moved), its content still hashes to ``content_hash`` (else it was
edited), ``hash`` links the three (else the chain columns were forged), and, where a signed checkpoint names the
position, that the checkpoint signed this very hash. The checkpoints themselves are verified first: each
signature against the trusted keys, each one naming its predecessor. Finally the newest checkpoint must not lie
beyond the end of the log: that is how a truncated tail shows.

Only the checkpoints read from outside the database (the sink's file) are trusted; the database's own copy in
``audit_checkpoints`` proves nothing against whoever can edit the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.canonical import FIELDS, GENESIS, canonical_detail, canonical_time, content_hash, link_hash
from gateway.audit.checkpoints import Checkpoint, line_digest, parse_checkpoint
from gateway.audit.retention import PURGE_KIND
from gateway.storage.audit_chain import ChainStore

PAGE = 20_000
_SEQ, _TIME, _KIND, _DETAIL = (FIELDS.index(name) for name in ("seq", "time", "kind", "detail"))
_POS, _CONTENT, _PREV, _HASH, _PURGED = range(len(FIELDS), len(FIELDS) + 5)


@dataclass(frozen=True, slots=True)
class Problem:
    message: str
    seq: int | None = None
    chain_pos: int | None = None

    def __str__(self) -> str:
        place = []
        if self.seq is not None:
            place.append(f"seq {self.seq}")
        if self.chain_pos is not None:
            place.append(f"chain position {self.chain_pos}")
        return f"{', '.join(place)}: {self.message}" if place else self.message


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_pos: int | None = None
    last_pos: int | None = None
    purged: int = 0
    unsealed: int = 0
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, object]:
        last = self.last_checkpoint
        return {
            "ok": self.ok,
            "records_checked": self.checked,
            "purged_stubs": self.purged,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_chain_pos": self.first_pos,
            "last_chain_pos": self.last_pos,
            "unsealed": self.unsealed,
            "checkpoints_checked": self.checkpoints,
            "last_checkpoint": None
            if last is None
            else {"number": last.number, "chain_pos": last.chain_pos, "time": last.time, "key_id": last.key_id},
            "problem": None
            if self.problem is None
            else {"seq": self.problem.seq, "chain_pos": self.problem.chain_pos, "message": self.problem.message},
            "warnings": self.warnings,
        }


def read_checkpoints(
    lines: Iterable[str], trusted: Mapping[str, Ed25519PublicKey]
) -> tuple[list[Checkpoint], Problem | None]:
    """Parse, verify and order the sink's checkpoints; the first problem found, if any."""
    by_number: dict[int, Checkpoint] = {}
    for index, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            checkpoint = parse_checkpoint(line, trusted)
        except ValueError as exc:
            return [], Problem(f"checkpoint line {index}: {exc}")
        known = by_number.get(checkpoint.number)
        if known is not None and known.line != checkpoint.line:
            return [], Problem(f"two different checkpoints carry number {checkpoint.number}")
        by_number[checkpoint.number] = checkpoint  # the same line twice: delivered twice, harmless
    ordered = [by_number[n] for n in sorted(by_number)]
    for before, after in itertools.pairwise(ordered):
        if after.number != before.number + 1:
            return ordered, Problem(f"checkpoint {before.number + 1} is missing from the sink (removed?)")
        if after.previous != line_digest(before.line):
            return ordered, Problem(f"checkpoint {after.number} does not follow checkpoint {before.number}")
        if after.chain_pos < before.chain_pos:
            return ordered, Problem(f"checkpoint {after.number} signs an earlier position than its predecessor")
    if ordered and ordered[0].number == 1 and ordered[0].previous != GENESIS:
        return ordered, Problem("checkpoint 1 names a predecessor")
    return ordered, None


async def verify_chain(
    store: ChainStore,
    checkpoint_lines: Iterable[str] | None,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    from_seq: int | None = None,
    to_seq: int | None = None,
    retention_cutoff: datetime | None = None,
) -> VerifyReport:
    report = VerifyReport()
    report.unsealed, _ = await store.unsealed()
    checkpoints: list[Checkpoint] = []
    if checkpoint_lines is None:
        report.warnings.append("no checkpoints were given: a rewritten chain or a truncated tail cannot be detected")
    else:
        checkpoints, problem = read_checkpoints(checkpoint_lines, trusted)
        if problem is not None:
            report.problem = problem
            return report
        report.checkpoints = len(checkpoints)
        report.last_checkpoint = checkpoints[-1] if checkpoints else None
    head = await store.head()
    anchor = await store.anchor()
    start_after = anchor.chain_pos if anchor is not None else 0
    prev = anchor.hash if anchor is not None else GENESIS
    until = head.chain_pos
    if from_seq is not None:
        position = await store.position_of(from_seq)
        if position is None:
            report.problem = Problem("no sealed record has this seq", seq=from_seq)
            return report
        if position - 1 > start_after:
            before = await store.rows_after(position - 2, position - 1, 1)
            if not before:
                report.problem = Problem("the record before it is missing", seq=from_seq, chain_pos=position)
                return report
            start_after, prev = position - 1, str(before[0][_HASH])
    if to_seq is not None:
        position = await store.position_of(to_seq)
        if position is None:
            report.problem = Problem("no sealed record has this seq", seq=to_seq)
            return report
        until = position
    signed = {c.chain_pos: c for c in checkpoints}
    # A chain that starts after position 1 must be vouched for by a chained purge record naming that anchor.
    vouched = anchor is None
    cutoff = canonical_time(retention_cutoff) if retention_cutoff is not None else None
    expected = start_after + 1
    last_seq: int | None = None
    # The next page is read while this one is hashed (aiosqlite reads in its own thread; PostgreSQL computes).
    upcoming: asyncio.Future[list[Sequence[Any]]] | None = (
        asyncio.ensure_future(store.rows_after(expected - 1, until, PAGE)) if expected <= until else None
    )
    while upcoming is not None:
        rows = await upcoming
        upcoming = None
        if not rows:
            break
        last = int(rows[-1][_POS])
        if last < until:
            upcoming = asyncio.ensure_future(store.rows_after(last, until, PAGE))
        for row in rows:
            pos, seq = int(row[_POS]), int(row[_SEQ])
            found = _check(row, pos, expected, prev, signed, cutoff)
            if found is not None:
                report.problem = Problem(found, seq=seq, chain_pos=pos)
                if upcoming is not None:
                    upcoming.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await upcoming
                return report
            if not vouched and row[_KIND] == PURGE_KIND and anchor is not None:
                detail = canonical_detail(row[_DETAIL]) or {}
                vouched = detail.get("anchor_pos") == anchor.chain_pos and detail.get("anchor_hash") == anchor.hash
            if report.first_seq is None:
                report.first_seq, report.first_pos = seq, pos
            report.checked += 1
            report.purged += bool(row[_PURGED])
            prev, expected, last_seq = str(row[_HASH]), pos + 1, seq
    report.last_seq, report.last_pos = last_seq, expected - 1 if report.checked else None
    if expected <= until:
        report.problem = Problem(f"records at chain positions {expected}..{until} are missing", chain_pos=expected)
        return report
    if not vouched and from_seq is None and to_seq is None and anchor is not None:
        report.problem = Problem(
            f"the log starts after chain position {anchor.chain_pos}, but no purge record names that anchor "
            "(records were deleted outside retention)",
            chain_pos=anchor.chain_pos + 1,
        )
        return report
    if to_seq is None and checkpoints:
        newest = checkpoints[-1]
        end = expected - 1
        if newest.chain_pos > end:
            report.problem = Problem(
                f"the log ends at chain position {end} (seq {last_seq}) but checkpoint {newest.number}, signed at "
                f"{newest.time}, covers position {newest.chain_pos} (seq {newest.seq}): the records after seq "
                f"{last_seq} were removed (truncated tail)",
                seq=last_seq,
                chain_pos=end + 1,
            )
    return report


def _check(
    row: Sequence[Any],
    pos: int,
    expected: int,
    prev: str,
    signed: Mapping[int, Checkpoint],
    cutoff: str | None,
) -> str | None:
    if pos != expected:
        return f"chain position {expected} is missing before this record (deleted)"
    if row[_PREV] != prev:
        return "its predecessor is not the record the chain names (a record was inserted, deleted or moved)"
    content = str(row[_CONTENT])
    if row[_PURGED]:
        if cutoff is not None and canonical_time(row[_TIME]) >= cutoff:
            return "the record's content was removed before its retention period ended"
    elif content_hash(row[: len(FIELDS)]) != content:
        return "the record was altered (its content no longer matches its hash)"
    if link_hash(prev, pos, content) != row[_HASH]:
        return "the chain hash was altered"
    checkpoint = signed.get(pos)
    if checkpoint is not None and checkpoint.hash != row[_HASH]:
        return f"differs from what checkpoint {checkpoint.number} signed at {checkpoint.time}"
    return None
