"""The access log's chain detects every kind of edit and names the first bad record (issue 5, item 1), on SQLite
and PostgreSQL, with records written through every path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.audit.canonical import content_hash, link_hash
from gateway.audit.checkpoints import generate_key
from gateway.storage.audit_chain import ChainStore
from tests.audit.chain_harness import Chain, chain_on, record


async def _chain(chain: Chain, count: int = 30) -> None:
    await chain.write([record(n) for n in range(count // 2)])
    await chain.write([record(n) for n in range(count // 2, count)], batch=True)
    await chain.seal_and_sign()


async def test_an_untouched_log_verifies_from_start_to_head(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        report = await chain.verify()
        assert report.ok, report.problem
        assert report.checked == 30 and report.first_pos == 1 and report.last_pos == 30
        assert report.checkpoints == 1 and report.last_checkpoint is not None
        assert report.last_checkpoint.chain_pos == 30


async def test_a_flipped_byte_names_the_edited_record(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        victim = await chain.seq_at(12)
        await chain.sql("UPDATE access_log SET agent_name = 'agent9' WHERE seq = :s", s=victim)
        report = await chain.verify()
        assert report.problem is not None
        assert (report.problem.seq, report.problem.chain_pos) == (victim, 12)
        assert "altered" in report.problem.message


async def test_an_edit_of_detail_json_is_seen(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        victim = await chain.seq_at(3)
        await chain.sql(
            "UPDATE access_log SET detail = :d WHERE seq = :s", d=json.dumps({"n": 3, "z": [1, 2], "a": "e"}), s=victim
        )
        report = await chain.verify()
        assert report.problem is not None and report.problem.seq == victim


async def test_a_deleted_record_is_named_by_the_record_after_it(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        after = await chain.seq_at(8)
        await chain.sql("DELETE FROM access_log WHERE chain_pos = 7")
        report = await chain.verify()
        assert report.problem is not None
        assert report.problem.seq == after and "position 7 is missing" in report.problem.message


async def test_two_swapped_records_are_seen(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        first = await chain.seq_at(10)
        await chain.sql("UPDATE access_log SET chain_pos = -1 WHERE chain_pos = 10")
        await chain.sql("UPDATE access_log SET chain_pos = 10 WHERE chain_pos = 11")
        await chain.sql("UPDATE access_log SET chain_pos = 11 WHERE chain_pos = -1")
        report = await chain.verify()
        assert report.problem is not None and report.problem.chain_pos == 10
        assert report.problem.seq != first  # the record now at position 10 is the one moved there


async def test_a_record_inserted_into_the_middle_is_seen_even_with_its_own_hashes_right(
    database_url: str, tmp_path: Path
) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        # The forger makes room at position 16 and writes a record whose content hash and link are computed
        # exactly as the sealer would; only the record after it can no longer agree.
        for position in range(30, 15, -1):
            await chain.sql("UPDATE access_log SET chain_pos = :n WHERE chain_pos = :p", n=position + 1, p=position)
        [(prev,)] = await chain.sql("SELECT hash FROM access_log WHERE chain_pos = 15")
        await chain.repository.append([record(999, agent_name="ghost")])
        [(seq,)] = await chain.sql("SELECT MAX(seq) FROM access_log")
        rows = await chain.sql(
            "SELECT seq, time, kind, request_id, agent_id, agent_name, source_ip, channel, method, path, status, "
            "decision, reason, bytes_in, bytes_out, duration_ms, actor, detail, subject, action "
            "FROM access_log WHERE seq = :s",
            s=seq,
        )
        content = content_hash(tuple(rows[0]))
        await chain.sql(
            "UPDATE access_log SET chain_pos = 16, content_hash = :c, prev_hash = :p, hash = :h WHERE seq = :s",
            c=content,
            p=prev,
            h=link_hash(prev, 16, content),
            s=seq,
        )
        report = await chain.verify()
        assert report.problem is not None and report.problem.chain_pos == 17
        assert "predecessor" in report.problem.message


async def test_a_truncated_tail_is_seen_through_the_signed_checkpoint(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        last_kept = await chain.seq_at(26)
        await chain.sql("DELETE FROM access_log WHERE chain_pos > 26")
        report = await chain.verify()
        assert report.problem is not None
        assert report.problem.seq == last_kept and report.problem.chain_pos == 27
        assert "truncated tail" in report.problem.message


async def test_a_chain_recomputed_after_an_edit_disagrees_with_the_checkpoint(
    database_url: str, tmp_path: Path
) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        victim = await chain.seq_at(20)
        await chain.sql("UPDATE access_log SET agent_name = 'someone else' WHERE seq = :s", s=victim)
        # Re-seal from position 20 on, as an insider who knows the algorithm would.
        await chain.sql("UPDATE access_log SET chain_pos = NULL, content_hash = NULL, prev_hash = NULL, hash = NULL "
                        "WHERE chain_pos >= 20")  # fmt: skip
        await chain.sealer.seal_all()
        report = await chain.verify()
        assert report.problem is not None and report.problem.chain_pos == 30
        assert "checkpoint 1" in report.problem.message


async def test_an_edited_or_removed_checkpoint_fails_verification(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        await chain.write([record(100)])
        await chain.seal_and_sign()
        await chain.write([record(101)])
        await chain.seal_and_sign()
        lines = chain.checkpoint_file.read_text().splitlines()
        assert len(lines) == 3
        edited = json.loads(lines[1]) | {"chain_pos": 5}
        chain.checkpoint_file.write_text("\n".join([lines[0], json.dumps(edited), lines[2]]) + "\n")
        report = await chain.verify()
        assert report.problem is not None and "bad signature" in report.problem.message
        chain.checkpoint_file.write_text("\n".join([lines[0], lines[2]]) + "\n")
        report = await chain.verify()
        assert report.problem is not None and "checkpoint 2 is missing" in report.problem.message


async def test_verification_holds_across_restarts_and_a_key_rotation(database_url: str, tmp_path: Path) -> None:
    old_private, old_public = generate_key()
    new_private, _ = generate_key()
    async with chain_on(database_url, tmp_path, keys={"2026-11": old_private}, active="2026-11") as chain:
        await _chain(chain)
    # A restart with a new active key: the retired key's public half stays trusted.
    async with chain_on(
        database_url, tmp_path, keys={"2026-12": new_private}, active="2026-12", trusted={"2026-11": old_public}
    ) as chain:
        await chain.write([record(n) for n in range(40, 50)])
        await chain.seal_and_sign()
        report = await chain.verify()
        assert report.ok, report.problem
        assert report.checked == 40 and report.checkpoints == 2
        assert report.last_checkpoint is not None and report.last_checkpoint.key_id == "2026-12"
    # Without the retired key, its checkpoint cannot be trusted.
    async with chain_on(database_url, tmp_path, keys={"2026-12": new_private}, active="2026-12") as chain:
        report = await chain.verify()
        assert report.problem is not None and "not trusted" in report.problem.message


async def test_a_range_verifies_from_a_given_record(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        start, end = await chain.seq_at(10), await chain.seq_at(20)
        report = await chain.verify(from_seq=start, to_seq=end)
        assert report.ok and report.checked == 11 and (report.first_seq, report.last_seq) == (start, end)


@pytest.mark.postgres
async def test_records_committing_out_of_seq_order_are_chained_in_commit_order(
    postgres_url: str, tmp_path: Path
) -> None:
    async with chain_on(postgres_url, tmp_path) as chain:
        async with chain.database.engine.connect() as slow:
            transaction = await slow.begin()
            await chain.repository.append([record(1, agent_name="slow")], conn=slow)  # takes a seq, not committed
            await chain.write([record(2, agent_name="fast")])
            await chain.sealer.seal_all()
            await transaction.commit()
        await chain.seal_and_sign()
        rows = await chain.sql("SELECT agent_name FROM access_log ORDER BY chain_pos")
        assert [name for (name,) in rows] == ["fast", "slow"]
        assert (await chain.verify()).ok


@pytest.mark.postgres
async def test_the_same_record_hashes_the_same_on_sqlite_and_postgresql(postgres_url: str, tmp_path: Path) -> None:
    hashes = []
    for url in (postgres_url, f"sqlite+aiosqlite:///{tmp_path}/same.db"):
        async with chain_on(url, tmp_path / url.split(":")[0]) as chain:
            await chain.write([record(7, detail={"b": [1, {"c": None}], "a": "é\u2028"}, reason="x|y=z\r\n")])
            await chain.sealer.seal_all()
            hashes.append(await chain.sql("SELECT content_hash FROM access_log"))
    assert hashes[0] == hashes[1]


async def test_two_sealers_racing_build_one_chain_with_every_record_once(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        other = ChainStore(chain.database.engine)
        try:
            for burst in range(5):
                await chain.write([record(burst * 100 + n) for n in range(40)], batch=True)
                await asyncio.gather(chain.store.seal(25), other.seal(25), chain.store.seal(25), other.seal(25))
            await chain.seal_and_sign()
        finally:
            other.close()
        rows = await chain.sql("SELECT COUNT(*), COUNT(DISTINCT chain_pos), MAX(chain_pos) FROM access_log")
        assert tuple(rows[0]) == (200, 200, 200)
        report = await chain.verify()
        assert report.ok and report.checked == 200
