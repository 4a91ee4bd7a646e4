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
import itertools
import multiprocessing
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.canonical import GENESIS, canonical_time
from gateway.audit.checkpoints import Checkpoint, line_digest, parse_checkpoint
from gateway.audit.verify_walk import HASH, Cutoffs, Walk, walk, walk_segment
from gateway.storage.audit_chain import ChainStore

#: Chains shorter than this are walked in this process (starting worker processes costs ~1 s).
PARALLEL_FROM = 200_000


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
    grant_retention_cutoff: datetime | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Verify. ``retention_cutoff`` / ``grant_retention_cutoff``: a purged stub of a record newer than these (the
    second for ``GRANT_KINDS``; the first when not given) was purged early. ``workers``: processes to share the
    walk (default: one per CPU once the chain is long enough to repay starting them; 1: this process only)."""
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
            start_after, prev = position - 1, str(before[0][HASH])
    if to_seq is not None:
        position = await store.position_of(to_seq)
        if position is None:
            report.problem = Problem("no sealed record has this seq", seq=to_seq)
            return report
        until = position
    signed = {c.chain_pos: (c.number, c.hash, c.time) for c in checkpoints}
    cutoffs = None
    if retention_cutoff is not None:
        content = canonical_time(retention_cutoff)
        grants = canonical_time(grant_retention_cutoff) if grant_retention_cutoff is not None else content
        cutoffs = Cutoffs(content, grants)
    walks = await _walk(store, start_after, until, prev, signed, cutoffs, workers)
    legacy_stubs = sum(seen.legacy_stubs for seen in walks)
    if legacy_stubs:
        report.warnings.append(
            f"{legacy_stubs} purged stub(s) were written before format cg2: only their links could be checked, "
            "not their seq, time and kind"
        )
    vouched = anchor is None
    last_seq: int | None = None
    end = start_after
    for number, seen in enumerate(walks):
        if seen.head is not None and number > 0:
            seq, pos, named = seen.head
            if pos != end + 1:
                report.problem = Problem(f"chain position {end + 1} is missing before this record (deleted)", seq, pos)
            elif named != prev:
                report.problem = Problem(
                    "its predecessor is not the record the chain names (a record was inserted, deleted or moved)",
                    seq,
                    pos,
                )
            if report.problem is not None:
                return report
        if seen.checked:
            if report.first_seq is None:
                report.first_seq, report.first_pos = seen.first_seq, seen.first_pos
            report.checked += seen.checked
            report.purged += seen.purged
            assert seen.last_pos is not None and seen.last_hash is not None
            last_seq, end, prev = seen.last_seq, seen.last_pos, seen.last_hash
        if anchor is not None and (anchor.chain_pos, anchor.hash) in seen.anchors:
            vouched = True
        if seen.problem is not None:
            seq, pos, message = seen.problem
            report.problem = Problem(message, seq, pos)
            return report
    report.last_seq, report.last_pos = last_seq, end if report.checked else None
    expected = end + 1
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


async def _walk(
    store: ChainStore, after: int, until: int, prev: str, signed: Mapping[int, tuple[int, str, str]],
    cutoffs: Cutoffs | None, workers: int | None,
) -> list[Walk]:  # fmt: skip
    """Walk (``after``, ``until``]: in this process, or in one segment per worker process for a long chain."""
    count = workers if workers is not None else (os.cpu_count() or 1)
    target = store.worker_target()
    if count < 2 or target is None or (workers is None and until - after < PARALLEL_FROM):
        return [await walk(store.rows_after, after, until, prev, signed, cutoffs)]
    bounds = [after + (until - after) * part // count for part in range(count + 1)]
    loop = asyncio.get_running_loop()
    # Spawned, not forked: this process has an event loop and driver threads a fork would copy mid-use.
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
        first = asyncio.ensure_future(walk(store.rows_after, bounds[0], bounds[1], prev, signed, cutoffs))
        rest = [
            loop.run_in_executor(pool, walk_segment, target, store.by_position_statement, lo, hi, signed, cutoffs)
            for lo, hi in itertools.pairwise(bounds[1:])
        ]
        return [await first, *await asyncio.gather(*rest)]
