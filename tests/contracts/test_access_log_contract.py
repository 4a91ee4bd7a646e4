"""The access-log contract on SQLite and PostgreSQL: append-only order, every column round-tripped, and the
batched path (sqlite3 in a worker thread on SQLite, ``gateway.storage.sqlite_batches``) writing what the strict
path writes."""

from __future__ import annotations

import inspect
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.access_log import AccessLogRepository, AccessRecord

NOW = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def _request(number: int, agent_id: str = "agent-1") -> AccessRecord:
    return AccessRecord(
        time=NOW + timedelta(seconds=number),
        kind="request",
        agent_id=agent_id,
        path=f"/chat/{number}",
        status=200,
        decision="allow",
    )


async def test_access_log_keeps_insertion_order_and_is_append_only(engine: AsyncEngine) -> None:
    log = AccessLogRepository(engine)

    first = await log.append([_request(n) for n in range(3)])
    second = await log.append([_request(n) for n in range(3, 6)])

    seqs = [record.seq for record in first + second if record.seq is not None]
    assert len(set(seqs)) == 6
    assert seqs == sorted(seqs)
    assert [r.path for r in await log.tail(4)] == ["/chat/2", "/chat/3", "/chat/4", "/chat/5"]
    assert await log.tail(100) == first + second
    first_seq = first[0].seq
    assert first_seq is not None
    assert [r.path for r in await log.after(first_seq, limit=2)] == ["/chat/1", "/chat/2"]
    public = {name for name, _ in inspect.getmembers(AccessLogRepository) if not name.startswith("_")}
    # Reads and appends only: content is removed by retention alone (gateway/storage/audit_chain.py ChainPurger).
    assert public == {"append", "append_batch", "append_rows", "tail", "after", "for_agent", "search", "close"}


async def test_access_log_returns_an_agents_newest_records_last(engine: AsyncEngine) -> None:
    log = AccessLogRepository(engine)
    await log.append([_request(n, agent_id="alice" if n % 2 else "bob") for n in range(6)])

    assert [r.path for r in await log.for_agent("alice", limit=2)] == ["/chat/3", "/chat/5"]
    assert await log.for_agent("nobody") == []
    assert await log.append([]) == []


async def test_access_log_round_trips_every_column(engine: AsyncEngine) -> None:
    log = AccessLogRepository(engine)
    record = AccessRecord(
        time=NOW,
        kind="deprovision",
        request_id="req-1",
        agent_id="agent-1",
        agent_name="alice",
        source_ip="2001:db8::1",
        channel="chat",
        method="POST",
        path="/chat/messages?to",
        status=403,
        decision="deny",
        reason="group_denied",
        bytes_in=5_000_000_000,
        bytes_out=0,
        duration_ms=12,
        actor="scim",
        detail={"sessions_killed": 2, "channels": ["chat", "voice"]},
        prev_hash="0" * 64,
        hash="f" * 64,
    )

    [written] = await log.append([record])

    assert written.seq is not None
    assert await log.tail(1) == [written]
    assert written == replace(record, seq=written.seq)


async def test_batched_appends_keep_order_and_every_field(engine: AsyncEngine) -> None:
    log = AccessLogRepository(engine)
    records = [
        AccessRecord(time=NOW, kind="request", path=f"/chat/{i}", status=200, bytes_out=i, detail={"i": i})
        for i in range(300)
    ]
    await log.append_batch(records)
    stored = await log.tail(300)
    assert [r.path for r in stored] == [f"/chat/{i}" for i in range(300)]
    assert stored[7].detail == {"i": 7}
    assert stored[7].bytes_out == 7
    assert stored[7].time == NOW


@pytest.mark.parametrize(
    "moment",
    [NOW, NOW.replace(microsecond=7), datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5)))],
)
async def test_a_batched_record_reads_back_exactly_like_one_written_strictly(
    engine: AsyncEngine, moment: datetime
) -> None:
    """``append_batch`` takes a faster path on SQLite (``gateway.storage.sqlite_batches``): same rows all the same."""
    log = AccessLogRepository(engine)
    try:
        for detail in (None, {"error": "client_disconnected", "n": [1, 2.5, None, "é"]}):
            record = AccessRecord(
                time=moment,
                kind="request",
                request_id="0123456789abcdef",
                agent_id="agent-1",
                agent_name="Zoë",
                source_ip="2001:db8::1",
                channel="chat",
                method="GET",
                path="/chat/ü?q",
                status=200,
                decision="allow",
                reason="route:chat",
                bytes_in=0,
                bytes_out=2**40,
                duration_ms=3,
                detail=detail,
            )
            [strict] = await log.append([record])
            await log.append_batch([record])
            [sealed, batched] = await log.tail(2)
            # On SQLite the batch seals the older record and itself as it commits (gateway/storage/sqlite_chain.py).
            chain = {name: getattr(batched, name) for name in ("chain_pos", "content_hash", "prev_hash", "hash")}
            assert batched == replace(strict, seq=batched.seq, **chain)
            assert sealed.seq == strict.seq and (sealed.chain_pos is None) == (batched.chain_pos is None)
            assert batched.seq is not None and strict.seq is not None and batched.seq > strict.seq
            assert batched.time == moment
    finally:
        log.close()
