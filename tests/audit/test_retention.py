"""Retention empties and deletes old access records and the chain still verifies from its anchor (issue 5, item 3:
"purging old records keeps the chain verifiable from a checkpoint"; grants and removals kept 3 years)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.audit.retention import PURGE_KIND, Retention
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
