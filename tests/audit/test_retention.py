"""Retention empties and deletes old access records and the chain still verifies from its anchor (issue 5, item 3:
"purging old records keeps the chain verifiable from a checkpoint"; grants and removals kept 3 years) — and a stub
proves its seq, time and kind, so the ``purged`` flag cannot be used to edit, empty early or forge records."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.audit.canonical import FIELDS, GENESIS, REST_FIELDS, legacy_bytes, link_hash, rest_hash
from gateway.audit.kinds import PURGE_KIND
from gateway.audit.retention import Retention
from gateway.audit.settings import AuditSettings
from gateway.storage.audit_chain import ChainPurger
from tests.audit.chain_harness import Chain, chain_on, record

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SETTINGS = AuditSettings(retention_days=730, grant_retention_days=1095)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


async def _history(chain: Chain) -> None:
    """Four years of records: each age has requests and a grant (a SCIM change)."""
    for age in (1500, 1200, 900, 800, 30, 1):
        await chain.write([record(age, time=days_ago(age)), record(age + 1, time=days_ago(age), kind="scim")])
        await chain.seal_and_sign()


async def _purge(chain: Chain) -> tuple[int, int]:
    counts = await Retention(ChainPurger(chain.store), SETTINGS, clock=lambda: NOW).purge()
    await chain.seal_and_sign()
    return counts.stubbed, counts.deleted


async def test_old_records_are_emptied_or_deleted_and_the_rest_still_verifies(
    database_url: str, tmp_path: Path
) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        assert await _purge(chain) == (2, 4)  # requests of 900 and 800 days emptied; everything past 1095 days gone
        rows = await chain.sql("SELECT kind, agent_name, purged, time FROM access_log ORDER BY chain_pos")
        kept = [(kind, name, bool(purged)) for kind, name, purged, _ in rows]
        # 900 and 800 days old: the requests are emptied stubs, the grants (SCIM changes) keep their content.
        assert kept[:4] == [("request", None, True), ("scim", "agent5", False), ("request", None, True),
                            ("scim", "agent3", False)]  # fmt: skip
        assert ("request", "agent2", False) in kept  # 30 days old: untouched
        assert kept[-1][0] == PURGE_KIND
        report = await chain.verify(retention_cutoff=NOW - timedelta(days=730))
        assert report.ok, report.problem
        assert report.first_pos == 5 and report.purged == 2


async def test_an_anchor_moved_by_hand_is_refused(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        await _purge(chain)
        [(hash_,)] = await chain.sql("SELECT hash FROM access_log WHERE chain_pos = 6")
        await chain.sql("DELETE FROM access_log WHERE chain_pos <= 6")
        await chain.sql("UPDATE audit_anchor SET chain_pos = 6, hash = :h", h=hash_)
        report = await chain.verify()
        assert report.problem is not None and "no purge record names that anchor" in report.problem.message


async def test_content_emptied_before_its_retention_ended_is_refused(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        await _purge(chain)
        [(seq,)] = await chain.sql(
            "SELECT MIN(seq) FROM access_log WHERE kind = 'request' AND time > :t", t=days_ago(40)
        )
        await chain.sql("UPDATE access_log SET agent_name = NULL, purged = :p WHERE seq = :s", p=True, s=seq)
        report = await chain.verify(retention_cutoff=NOW - timedelta(days=730))
        assert report.problem is not None and report.problem.seq == seq
        assert "before its retention period ended" in report.problem.message


async def test_a_second_purge_moves_the_anchor_and_names_it_again(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        await _purge(chain)
        later = Retention(ChainPurger(chain.store), SETTINGS, clock=lambda: NOW + timedelta(days=300))
        counts = await later.purge()
        await chain.seal_and_sign()
        assert counts.deleted == 4 and counts.anchor is not None and counts.anchor.chain_pos == 8
        assert (await chain.verify()).ok


def _cutoffs() -> dict[str, datetime]:
    """What ``channelgate audit verify`` passes for SETTINGS at NOW."""
    return {
        "retention_cutoff": NOW - timedelta(days=SETTINGS.retention_days),
        "grant_retention_cutoff": NOW - timedelta(days=SETTINGS.grant_retention_days),
    }


async def _forge_stub(chain: Chain, seq: int, **head: object) -> None:
    """Empty a record as retention would — its rest hash computed from its real content, the best a forger can
    do — then change its head (seq, time, kind) as given."""
    [row] = await chain.sql(f"SELECT {', '.join(FIELDS)} FROM access_log WHERE seq = :s", s=seq)  # noqa: S608
    emptied = ", ".join(f"{name} = NULL" for name in REST_FIELDS)
    changes = "".join(f", {name} = :{name}" for name in head)
    await chain.sql(
        f"UPDATE access_log SET purged = :p, rest_hash = :r, {emptied}{changes} WHERE seq = :s",  # noqa: S608
        p=True, r=rest_hash(row), s=seq, **head,
    )  # fmt: skip


async def test_a_genuine_stub_proves_its_head(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        await _purge(chain)
        rows = await chain.sql("SELECT rest_hash FROM access_log WHERE purged = :p", p=True)
        assert len(rows) == 2 and all(len(rest) == 43 for (rest,) in rows)
        report = await chain.verify(**_cutoffs())
        assert report.ok and report.purged == 2 and report.warnings == [], (report.problem, report.warnings)


@pytest.mark.parametrize(
    ("forgery", "message"),
    [
        ("flag only", "marked purged but still has content"),
        ("emptied, time moved back to look due", "seq, time or kind was altered"),
        ("emptied, kind changed", "seq, time or kind was altered"),
    ],
)
async def test_the_purged_flag_cannot_hide_an_edit(
    database_url: str, tmp_path: Path, forgery: str, message: str
) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        await _purge(chain)
        if forgery == "flag only":  # a record 800 days old, flagged purged and rewritten instead of emptied
            [(seq,)] = await chain.sql(
                "SELECT seq FROM access_log WHERE kind = 'request' AND purged = :p ORDER BY seq LIMIT 1", p=True
            )
            await chain.sql(
                "UPDATE access_log SET agent_name = 'someone else', decision = 'deny', rest_hash = NULL WHERE seq = :s",
                s=seq,
            )
            await chain.sql("UPDATE access_log SET agent_id = 'x' WHERE seq = :s", s=seq)
        elif forgery.endswith("due"):  # 30 days old: emptied by hand and passed off as 800 days old
            [(seq,)] = await chain.sql(
                "SELECT MIN(seq) FROM access_log WHERE kind = 'request' AND time > :t", t=days_ago(40)
            )
            await _forge_stub(chain, seq, time=days_ago(800))
        else:  # a SCIM grant 800 days old (kept 3 years) emptied by hand as if it were a request record
            [(seq,)] = await chain.sql(
                "SELECT MIN(seq) FROM access_log WHERE kind = 'scim' AND time < :t", t=days_ago(700)
            )
            await _forge_stub(chain, seq, kind="request")
        report = await chain.verify(**_cutoffs())
        assert report.problem is not None and report.problem.seq == seq, report.problem
        assert message in report.problem.message


async def test_a_grant_record_emptied_before_its_grant_retention_ended_is_detected(
    database_url: str, tmp_path: Path
) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        await _purge(chain)
        # 800 days: past the 730 days of access records, inside the 1,095 of grants. Emptied with a correct rest
        # hash and an untouched head, only the grant retention can tell.
        [(seq,)] = await chain.sql("SELECT MIN(seq) FROM access_log WHERE kind = 'scim' AND time < :t", t=days_ago(700))
        await _forge_stub(chain, seq)
        report = await chain.verify(**_cutoffs())
        assert report.problem is not None and report.problem.seq == seq
        assert "before its retention period ended" in report.problem.message


async def test_a_forged_purge_stub_does_not_vouch_for_a_moved_anchor(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _history(chain)
        [(anchor_hash,)] = await chain.sql("SELECT hash FROM access_log WHERE chain_pos = 6")
        await chain.sql("DELETE FROM access_log WHERE chain_pos <= 6")
        await chain.sql(
            "INSERT INTO audit_anchor (id, chain_pos, hash, purged_at) VALUES (1, 6, :h, :t)", h=anchor_hash, t=NOW
        )
        # A later record turned into the "stub" of a purge record naming that anchor.
        [(seq,)] = await chain.sql("SELECT seq FROM access_log WHERE chain_pos = 9")
        await chain.sql(
            "UPDATE access_log SET purged = :p, kind = :k, detail = :d WHERE seq = :s",
            p=True, k=PURGE_KIND, d=json.dumps({"anchor_pos": 6, "anchor_hash": anchor_hash}), s=seq,
        )  # fmt: skip
        report = await chain.verify()
        assert report.problem is not None, "records deleted from the start of the log and verify said OK"


async def _rehash_as_cg1(chain: Chain) -> None:
    """Rewrite the chain as a database written before format cg2 holds it: bare hex SHA-256 content hashes."""
    rows = await chain.sql(f"SELECT {', '.join(FIELDS)} FROM access_log ORDER BY chain_pos")  # noqa: S608
    prev = GENESIS
    for position, row in enumerate(rows, start=1):
        content = hashlib.sha256(legacy_bytes(row)).hexdigest()
        digest = link_hash(prev, position, content)
        await chain.sql(
            "UPDATE access_log SET content_hash = :c, prev_hash = :p, hash = :h WHERE seq = :s",
            c=content, p=prev, h=digest, s=row[0],
        )  # fmt: skip
        prev = digest


async def test_a_log_written_before_format_cg2_still_verifies_and_its_stubs_are_named(
    database_url: str, tmp_path: Path
) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        for age in (900, 800, 30):
            await chain.write([record(age, time=days_ago(age))])
        await chain.sealer.seal_all()
        await _rehash_as_cg1(chain)
        assert (await chain.verify(**_cutoffs())).ok
        stubbed, _ = await _purge(chain)  # the purge record itself is cg2, chained after the cg1 records
        assert stubbed == 2
        report = await chain.verify(**_cutoffs())
        assert report.ok, report.problem
        assert any("2 purged stub(s) were written before format cg2" in warning for warning in report.warnings)
        # A cg1 record is still checked whole.
        await chain.sql("UPDATE access_log SET agent_name = 'someone else' WHERE purged = :p", p=False)
        assert not (await chain.verify(**_cutoffs())).ok
