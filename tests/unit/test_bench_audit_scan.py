"""The audit benchmark's write, seal, verify and scan, on a few hundred records (bench/audit.py ``_verify``): when the
chain's row shape changes, this breaks in `make test`, not into `make bench` (it did once: a column was added)."""

from __future__ import annotations

from pathlib import Path

from bench.audit import _verify


async def test_the_audit_benchmark_writes_seals_verifies_and_scans_a_small_chain(tmp_path: Path) -> None:
    row = await _verify(f"sqlite+aiosqlite:///{tmp_path}/log.db", tmp_path, 300, "SQLite")
    assert row.ok and row.records == 300
