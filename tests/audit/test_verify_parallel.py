"""``audit verify`` across worker processes finds the same first bad record as the single walk, seams included
(the chain of 40 records is cut at position 20 for two workers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.audit.verify as verify_module
from tests.audit.chain_harness import Chain, chain_on, record


@pytest.fixture(autouse=True)
def parallel_from_the_first_record() -> Iterator[None]:
    saved = verify_module.PARALLEL_FROM
    verify_module.PARALLEL_FROM = 0
    yield
    verify_module.PARALLEL_FROM = saved


async def _chain(chain: Chain) -> None:
    await chain.write([record(n) for n in range(40)], batch=True)
    await chain.seal_and_sign()


async def test_an_untouched_chain_verifies_in_two_workers(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        report = await chain.verify(workers=2)
        assert report.ok, report.problem
        assert (report.checked, report.first_pos, report.last_pos) == (40, 1, 40)


@pytest.mark.parametrize("position", [5, 21, 33])
async def test_an_edit_in_either_segment_is_named(database_url: str, tmp_path: Path, position: int) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        victim = await chain.seq_at(position)
        await chain.sql("UPDATE access_log SET path = '/elsewhere' WHERE seq = :s", s=victim)
        await chain.sql("UPDATE access_log SET path = '/also' WHERE chain_pos = 38")  # a later edit, not named
        report = await chain.verify(workers=2)
        assert report.problem is not None and (report.problem.seq, report.problem.chain_pos) == (victim, position)


@pytest.mark.parametrize("position", [20, 21])
async def test_a_record_deleted_at_the_seam_is_named(database_url: str, tmp_path: Path, position: int) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        after = await chain.seq_at(position + 1)
        await chain.sql("DELETE FROM access_log WHERE chain_pos = :p", p=position)
        report = await chain.verify(workers=2)
        assert report.problem is not None
        assert (report.problem.seq, report.problem.chain_pos) == (after, position + 1)
        assert f"position {position} is missing" in report.problem.message


async def test_a_forged_seam_link_is_named(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        first_of_second = await chain.seq_at(21)
        await chain.sql("UPDATE access_log SET prev_hash = :h WHERE chain_pos = 21", h="f" * 64)
        report = await chain.verify(workers=2)
        assert report.problem is not None and report.problem.seq == first_of_second
        assert "predecessor" in report.problem.message


async def test_a_truncated_tail_is_still_seen(database_url: str, tmp_path: Path) -> None:
    async with chain_on(database_url, tmp_path) as chain:
        await _chain(chain)
        await chain.sql("DELETE FROM access_log WHERE chain_pos > 35")
        report = await chain.verify(workers=2)
        assert report.problem is not None and "truncated tail" in report.problem.message
