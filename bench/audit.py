"""Issue 5's benchmarks: durable access-log writes, ``audit verify`` of 1,000,000 records, and a log search over
10,000,000 records on PostgreSQL.

- Writes: request records through the gateway's own path (``AuditLog.submit``: batched, one transaction per
  batch) with the sealer running beside it, until every record is committed *and* chained; state-change records
  through ``AuditLog.write`` (strict: one transaction each, 32 writers at once). SQLite in WAL mode with
  ``synchronous=FULL`` (the gateway's setting), PostgreSQL 15 with ``fsync``/``synchronous_commit`` on. Baseline,
  same run and database: the same rows inserted by the bare driver (``sqlite3`` / ``asyncpg``) in batches of 500.
- Verify: 1,000,000 records written and sealed, one signed checkpoint, then ``verify_chain`` over all of them.
  Baseline: reading the same rows in chain order without hashing them.
- Search: 10,000,000 records of 1,000 agents over 30 days, generated inside PostgreSQL; 1,000 searches through
  ``AccessLogRepository.search`` (the CLI's and the API's path) for a random agent and a random one-day window,
  newest 100 first. Baseline: the same statement through bare asyncpg.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from gateway.audit.chain import Sealer
from gateway.audit.checkpoints import CheckpointSigner, FileSink, generate_key
from gateway.audit.settings import AuditSettings, CheckpointSettings
from gateway.audit.verify import verify_chain
from gateway.audit.writer import AuditLog
from gateway.metrics import Metrics
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessQuery, AccessRecord, insert_row
from gateway.storage.audit_chain import CHAIN_COLUMNS, ChainStore
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from tests.components.postgres_server import DURABLE_SETTINGS, PostgresServer

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _log(message: str) -> None:
    print(f"[audit] {message}", flush=True)


def _record(number: int) -> AccessRecord:
    return AccessRecord(
        time=T0 + timedelta(milliseconds=number),
        kind="request",
        request_id=f"{number:016x}",
        agent_id=f"agent-{number % 1000:04d}",
        agent_name=f"agent{number % 1000:04d}",
        source_ip="10.1.2.3",
        channel=("chat", "phone", "mail")[number % 3],
        method="GET",
        path=f"/chat/customers/C-{number % 50_000}/history",
        status=200,
        decision="allow",
        reason="group:chat-agents",
        bytes_in=0,
        bytes_out=1234,
        duration_ms=3,
        subject=f"C-{number % 50_000}",
        action="view",
    )


@dataclass
class WriteRow:
    database: str
    mode: str
    records: int
    seconds: float
    baseline_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def ratio(self) -> float | None:
        return None if self.baseline_seconds is None else self.baseline_seconds / self.seconds


@dataclass
class VerifyRow:
    database: str
    records: int
    write_seconds: float
    seal_seconds: float
    verify_seconds: float
    scan_seconds: float
    ok: bool


@dataclass
class SearchRow:
    records: int
    agents: int
    load_seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    baseline_ms: list[float] = field(default_factory=list)
    rows_returned: list[int] = field(default_factory=list)


@dataclass
class AuditBenchResult:
    writes: list[WriteRow] = field(default_factory=list)
    verify: list[VerifyRow] = field(default_factory=list)
    search: SearchRow | None = None


def _sealer(database: Database, directory: Path) -> Sealer:
    private, _ = generate_key()
    settings = CheckpointSettings(
        sink=f"file://{directory}/checkpoints.jsonl", signing_keys={"b1": SecretStr(private)}, active_key="b1"
    )
    return Sealer(
        ChainStore(database.engine), AuditSettings(checkpoints=settings, seal_interval_seconds=0.2), Metrics(),
        CheckpointSigner(settings), FileSink(directory / "checkpoints.jsonl"),
    )  # fmt: skip


#: Where a row of ``ChainStore.rows_after`` holds its chain position: the chain's own columns close each row.
_CHAIN_POS = CHAIN_COLUMNS.index("chain_pos") - len(CHAIN_COLUMNS)


async def _open(url: str) -> Database:
    await upgrade_to_head(url)
    return Database.from_settings(DatabaseSettings(url=SecretStr(url)))


async def _batched(url: str, directory: Path, count: int) -> float:
    """Submit ``count`` request records as the proxy does, with the sealer running; seconds until all are
    committed and chained."""
    database = await _open(url)
    audit = AuditLog(AccessLogRepository(database.engine), max_pending=count + 1)
    sealer = _sealer(database, directory)
    audit.start()
    sealer.start()
    started = time.perf_counter()
    for number in range(count):
        audit.submit(_record(number))
        if number % 200 == 199:
            await asyncio.sleep(0)  # requests arrive over time; the writer gets the loop between them
    await audit.flush()
    while (await sealer.store.unsealed())[0]:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await audit.stop()
    await sealer.stop()
    await database.dispose()
    return elapsed


async def _strict(url: str, seconds: float, writers: int = 32) -> tuple[int, float]:
    database = await _open(url)
    audit = AuditLog(AccessLogRepository(database.engine))
    deadline = time.perf_counter() + seconds
    counts = [0] * writers

    async def writer(index: int) -> None:
        number = index * 10_000_000
        while time.perf_counter() < deadline:
            await audit.write(_record(number))
            number += 1
            counts[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    elapsed = time.perf_counter() - started
    await audit.stop()
    await database.dispose()
    return sum(counts), elapsed


def _sqlite_rows(records: Sequence[AccessRecord]) -> list[tuple[object, ...]]:
    rows = []
    for record in records:
        row = insert_row(record)
        row["time"] = row["time"].strftime("%Y-%m-%d %H:%M:%S.%f")
        row["detail"] = "null"
        rows.append(tuple(row.values()))
    return rows


async def _baseline_sqlite(path: Path, count: int) -> float:
    columns = tuple(insert_row(_record(0)).keys())
    statement = f"INSERT INTO access_log ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
    rows = _sqlite_rows([_record(n) for n in range(count)])
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    started = time.perf_counter()
    for start in range(0, count, 500):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(statement, rows[start : start + 500])
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


async def _baseline_postgres(dsn: str, count: int) -> float:
    columns = tuple(insert_row(_record(0)).keys())
    statement = (
        f"INSERT INTO access_log ({', '.join(columns)}) "  # noqa: S608 - our column names
        f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))})"
    )
    rows = [tuple(insert_row(_record(n)).values()) for n in range(count)]
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter()
    for start in range(0, count, 500):
        async with connection.transaction():
            await connection.executemany(statement, rows[start : start + 500])
    elapsed = time.perf_counter() - started
    await connection.close()
    return elapsed


async def _verify(url: str, directory: Path, count: int, label: str) -> VerifyRow:
    database = await _open(url)
    repository = AccessLogRepository(database.engine)
    started = time.perf_counter()
    for start in range(0, count, 5000):
        await repository.append_batch([_record(n) for n in range(start, min(count, start + 5000))])
    written = time.perf_counter() - started
    sealer = _sealer(database, directory)
    started = time.perf_counter()
    await sealer.seal_all()
    sealed = time.perf_counter() - started
    await sealer.checkpoint(force=True)
    lines = (directory / "checkpoints.jsonl").read_text().splitlines()
    started = time.perf_counter()
    report = await verify_chain(sealer.store, lines, sealer.signer.trusted)
    verified = time.perf_counter() - started
    started = time.perf_counter()
    after = 0
    while rows := await sealer.store.rows_after(after, count, 20_000):
        after = int(rows[-1][_CHAIN_POS])
    scanned = time.perf_counter() - started
    repository.close()
    await database.dispose()
    return VerifyRow(label, report.checked, written, sealed, verified, scanned, report.ok and report.checked == count)


_GENERATE = """
INSERT INTO access_log (time, kind, request_id, agent_id, agent_name, source_ip, channel, method, path, status,
                        decision, bytes_out, duration_ms, subject, action, detail, purged, chain_pos)
SELECT TIMESTAMPTZ '2026-11-01 00:00:00+00' + (g * INTERVAL '1 second') * (30 * 86400.0 / $2),
       'request', lpad(to_hex(g), 16, '0'), 'agent-' || lpad((g % $3)::text, 4, '0'),
       'agent' || lpad((g % $3)::text, 4, '0'), '10.1.2.3', (ARRAY['chat','phone','mail'])[1 + g % 3], 'GET',
       '/chat/customers/C-' || (g % 50000) || '/history', 200, 'allow', 1234, 3, 'C-' || (g % 50000), 'view',
       'null', false, g
FROM generate_series($1::bigint, $1::bigint + $4 - 1) AS g
"""


async def _search(url: str, dsn: str, count: int, agents: int, queries: int) -> SearchRow:
    database = await _open(url)
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter()
    await connection.execute("SET synchronous_commit = off")
    chunk = 1_000_000
    for start in range(1, count + 1, chunk):
        await connection.execute(_GENERATE, start, count, agents, min(chunk, count - start + 1))
        _log(f"search: {min(count, start + chunk - 1):,} records loaded")
    await connection.execute("VACUUM ANALYZE access_log")
    loaded = time.perf_counter() - started
    row = SearchRow(count, agents, loaded)
    repository = AccessLogRepository(database.engine)
    chooser = random.Random(5)
    statement = (
        "SELECT * FROM access_log WHERE agent_id = $1 AND time >= $2 AND time < $3 "
        "ORDER BY time DESC, seq DESC LIMIT 100"
    )
    for number in range(queries + 20):
        agent = f"agent-{chooser.randrange(agents):04d}"
        since = T0 + timedelta(days=chooser.randrange(29), seconds=chooser.randrange(86400))
        until = since + timedelta(days=1)
        began = time.perf_counter()
        found = await repository.search(AccessQuery(agent_id=agent, since=since, until=until, limit=100))
        took = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        await connection.fetch(statement, agent, since, until)
        raw = (time.perf_counter() - began) * 1000
        if number >= 20:  # the first queries warm the pool and the plan cache
            row.latencies_ms.append(took)
            row.baseline_ms.append(raw)
            row.rows_returned.append(len(found))
    await connection.close()
    repository.close()
    await database.dispose()
    return row


def run_audit(*, write_records: int = 50_000, strict_seconds: float = 5.0, verify_records: int = 1_000_000,
              search_records: int = 10_000_000, search_queries: int = 1_000) -> AuditBenchResult:  # fmt: skip
    result = AuditBenchResult()
    with tempfile.TemporaryDirectory(prefix="channelgate-bench-audit-") as temp:
        work = Path(temp)
        pg_dir = Path(tempfile.mkdtemp(prefix="channelgate-bench-audit-pg-"))
        server = PostgresServer(pg_dir, settings=DURABLE_SETTINGS)
        server.start()
        try:
            for label in ("SQLite (WAL, synchronous=FULL)", "PostgreSQL 15 (fsync on)"):
                sqlite = label.startswith("SQLite")
                for mode in ("batched", "strict", "verify"):
                    name = f"{'sq' if sqlite else 'pg'}_{mode}"
                    directory = work / name
                    directory.mkdir()
                    url = f"sqlite+aiosqlite:///{directory}/channelgate.db" if sqlite else server.create_database(name)
                    if mode == "batched":
                        seconds = asyncio.run(_batched(url, directory, write_records))
                        base_url = server.create_database(name + "_base") if not sqlite else None
                        asyncio.run(upgrade_to_head(base_url or f"sqlite+aiosqlite:///{directory}/base.db"))
                        baseline = asyncio.run(
                            _baseline_sqlite(directory / "base.db", write_records)
                            if sqlite
                            else _baseline_postgres(server.dsn(name + "_base"), write_records)
                        )
                        row = WriteRow(label, "request records, batched, sealed", write_records, seconds, baseline)
                        result.writes.append(row)
                        _log(f"{label}: batched {row.rate:,.0f}/s (bare driver {write_records / baseline:,.0f}/s)")
                    elif mode == "strict":
                        written, seconds = asyncio.run(_strict(url, strict_seconds))
                        result.writes.append(WriteRow(label, "state-change records, strict, 32 writers", written,
                                                      seconds))  # fmt: skip
                        _log(f"{label}: strict {written / seconds:,.0f}/s")
                    else:
                        verified = asyncio.run(_verify(url, directory, verify_records, label))
                        result.verify.append(verified)
                        _log(f"{label}: verify {verified.records:,} in {verified.verify_seconds:.1f} s")
            if search_records:
                url = server.create_database("search")
                result.search = asyncio.run(_search(url, server.dsn("search"), search_records, 1000, search_queries))
                p99 = _percentile(result.search.latencies_ms, 99)
                _log(f"search over {search_records:,}: p99 {p99:.1f} ms")
        finally:
            server.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)
    return result


def _percentile(values: Sequence[float], percent: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
