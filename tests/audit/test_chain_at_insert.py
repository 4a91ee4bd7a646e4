"""On SQLite the batch writer chains its rows as it inserts them, sealing first the older records other writers
left unsealed (gateway/storage/sqlite_chain.py); the chain it builds is the one the sealer would have built."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit.canonical import GENESIS
from gateway.storage import sqlite_chain
from gateway.storage.access_log import INSERT_COLUMNS, insert_values
from gateway.storage.sqlite_batches import SqliteBatchWriter
from gateway.storage.sqlite_chain import ChainedInsert
from tests.audit.chain_harness import Chain, chain_on, record


def _url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/log.db"


async def _unsealed(chain: Chain) -> int:
    [(count,)] = await chain.sql("SELECT COUNT(*) FROM access_log WHERE chain_pos IS NULL")
    return int(count)


async def _order(chain: Chain) -> list[str]:
    rows = await chain.sql("SELECT agent_name FROM access_log ORDER BY chain_pos")
    return [str(name) for (name,) in rows]


async def test_a_batch_written_when_nothing_waits_is_chained_as_it_commits(tmp_path: Path) -> None:
    async with chain_on(_url(tmp_path), tmp_path) as chain:
        await chain.write([record(n) for n in range(20)], batch=True)
        await chain.write([record(n) for n in range(20, 50)], batch=True)
        assert await _unsealed(chain) == 0  # no sealing pass ran
        rows = await chain.sql("SELECT seq, chain_pos, prev_hash FROM access_log ORDER BY seq")
        assert [(seq, pos) for seq, pos, _ in rows] == [(n, n) for n in range(1, 51)]
        assert rows[0][2] == GENESIS
        await chain.seal_and_sign()
        report = await chain.verify()  # recomputes every content hash from the rows as read back
        assert report.ok, report.problem
        assert report.checked == 50 and report.last_checkpoint is not None


async def test_a_batch_behind_an_unsealed_record_seals_it_first_in_commit_order(tmp_path: Path) -> None:
    async with chain_on(_url(tmp_path), tmp_path) as chain:
        await chain.write([record(1, agent_name="first-batch")], batch=True)
        await chain.write([record(2, agent_name="strict")])  # through SQLAlchemy: committed unsealed
        assert await _unsealed(chain) == 1
        await chain.write([record(3, agent_name="second-batch")], batch=True)
        assert await _unsealed(chain) == 0  # no sealing pass ran: the batch sealed the older record first
        assert await _order(chain) == ["first-batch", "strict", "second-batch"]
        await chain.seal_and_sign()
        report = await chain.verify()
        assert report.ok and report.checked == 3, report.problem


async def test_batches_behind_more_unsealed_records_than_one_seals_catch_up_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process (the gateway's writer runs in a child, where a patched limit would not reach)."""
    monkeypatch.setattr(sqlite_chain, "CATCH_UP", 2)
    writer = SqliteBatchWriter(
        str(tmp_path / "log.db"), "access_log", INSERT_COLUMNS, busy_timeout_seconds=5,
        chain=ChainedInsert(INSERT_COLUMNS),
    )  # fmt: skip
    async with chain_on(_url(tmp_path), tmp_path) as chain:
        await chain.write([record(n, agent_name=f"strict-{n}") for n in range(5)])
        unsealed = []
        for number in range(5):
            writer.write([insert_values(record(10 + number, agent_name=f"batch-{number}"))])
            unsealed.append(await _unsealed(chain))
        writer.close()
        # Two sealed per batch; a batch behind more than two goes in unsealed itself, after them.
        assert unsealed == [4, 3, 2, 0, 0]
        rows = await chain.sql("SELECT seq, chain_pos FROM access_log ORDER BY seq")
        assert [position for _, position in rows] == list(range(1, 11))  # commit order
        await chain.seal_and_sign()
        report = await chain.verify()
        assert report.ok and report.checked == 10, report.problem


async def test_a_batch_continues_the_chain_from_a_purge_anchor(tmp_path: Path) -> None:
    async with chain_on(_url(tmp_path), tmp_path) as chain:
        await chain.write([record(n) for n in range(3)], batch=True)
        [(position, digest)] = await chain.sql("SELECT chain_pos, hash FROM access_log ORDER BY chain_pos DESC LIMIT 1")
        # What retention leaves when it deleted every record outright: the anchor names the last one.
        await chain.sql(
            "INSERT INTO audit_anchor (id, chain_pos, hash, purged_at) "
            "VALUES (1, :p, :h, '2026-11-02 10:00:00.000000')",
            p=position,
            h=digest,
        )
        await chain.sql("DELETE FROM access_log")
        await chain.write([record(9, agent_name="after-purge")], batch=True)
        [(pos, prev)] = await chain.sql("SELECT chain_pos, prev_hash FROM access_log")
        assert (pos, prev) == (position + 1, digest)
        head = await chain.store.head()
        assert head.chain_pos == position + 1


async def test_a_batch_keeps_every_character_of_its_values_but_nul_and_still_verifies(tmp_path: Path) -> None:
    """The batch goes to SQLite as multi-row INSERTs of bound parameters: any character survives but a NUL in a
    text, replaced by U+FFFD as on PostgreSQL, which holds none (gateway/storage/limits.py); in ``detail``'s JSON it
    survives too."""
    names = ["a\x00b", "é\u2028😀", "back\\u0000slash", 'quote"s']
    kept = ["a\ufffdb", *names[1:]]
    async with chain_on(_url(tmp_path), tmp_path) as chain:
        for number, name in enumerate(names):
            await chain.write([record(number, agent_name=name, detail={"k": name})], batch=True)
        await chain.write([record(9, agent_name=name) for name in names], batch=True)
        rows = await chain.sql("SELECT agent_name FROM access_log ORDER BY seq")
        assert [name for (name,) in rows] == [*kept, *kept]
        details = [r.detail for r in await chain.repository.tail(8)][:4]
        assert details == [{"k": names[0], "fitted": ["agent_name"]}, *({"k": name} for name in names[1:])]
        await chain.seal_and_sign()
        report = await chain.verify()
        assert report.ok and report.checked == 8, report.problem


async def test_records_sharing_one_detail_object_and_records_with_their_own_keep_each_its_detail(
    tmp_path: Path,
) -> None:
    """A batch encodes each ``detail`` object once (a kept forward-auth answer's records share one): records that
    share it, records with an equal copy, a different one and none each read back their own."""
    shared = {"via": "forward-auth"}
    details = [shared, shared, {"via": "forward-auth"}, {"via": "other", "n": 2}, None, shared]
    async with chain_on(_url(tmp_path), tmp_path) as chain:
        await chain.write([record(n, detail=d) for n, d in enumerate(details)], batch=True)
        records = await chain.repository.tail(100)
        assert [r.detail for r in records] == details
        await chain.seal_and_sign()
        report = await chain.verify()
        assert report.ok and report.checked == len(details), report.problem
