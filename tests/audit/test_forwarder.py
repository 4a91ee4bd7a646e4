"""Continuous forwarding to a SIEM (issue 5, item 4): every sealed record arrives, in chain order, at least once,
over syslog TLS (RFC 5425) and HTTPS, through a receiver that goes away mid-stream and comes back; the cursor
never passes a record the receiver did not get; an untrusted certificate gets nothing; one replica forwards."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.checkpoints import CheckpointSinkError, HttpSink
from gateway.audit.forwarder import Forwarder, Forwarders, GapInChain, Timing, deliverable
from gateway.audit.settings import CheckpointSettings, ExportFormat, ForwarderSettings
from gateway.audit.transports import ForwardingFailed, transport_for
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessRecord
from gateway.storage.audit_chain import ChainStore
from gateway.storage.database import Database
from gateway.storage.forwarders import ForwarderStore
from gateway.storage.migrate import upgrade_to_head
from tests.audit.siem_receivers import HOST, HttpsCollector, Pki, SyslogReceiver
from tests.components.asgi_server import bound_socket

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
FAST = Timing(poll_seconds=0.05, retry_base_seconds=0.05, retry_cap_seconds=0.4, lease_retry_seconds=0.1)
TOKEN = "siem-ingest-token"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    yield database.engine
    await database.dispose()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path}/data/channelgate.db"
    await upgrade_to_head(url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(url)))
    yield database.engine
    await database.dispose()


async def write_and_seal(engine: AsyncEngine, first: int, count: int) -> None:
    records = [
        AccessRecord(
            time=T0 + timedelta(milliseconds=n),
            kind="request",
            agent_name=f"agent{n % 5}\r\nforged",
            path=f"/chat/customers/{n}",
            decision="allow",
        )
        for n in range(first, first + count)
    ]
    repository = AccessLogRepository(engine)
    try:
        await repository.append_batch(records)
    finally:
        repository.close()
    await ChainStore(engine).seal(100_000)


def build(
    engine: AsyncEngine, url: str, *, fmt: ExportFormat = "syslog", ca_file: Path | None = None, batch: int = 40
) -> tuple[Forwarder, CollectorRegistry]:
    settings = ForwarderSettings(
        name="siem",
        url=url,
        format=fmt,
        ca_file=str(ca_file) if ca_file else None,
        token=SecretStr(TOKEN) if url.startswith("https://") else None,
        batch_size=batch,
    )
    registry = CollectorRegistry()
    group = Forwarders.build([settings], ForwarderStore(engine), registry, syslog_enterprise_number=32473, timing=FAST)
    return group.forwarders[0], registry


_CHAIN_POS = re.compile(r'chainPos="(\d+)"')


def syslog_positions(messages: Sequence[str]) -> list[int]:
    positions = []
    for message in messages:
        match = _CHAIN_POS.search(message)
        assert match is not None, message[:200]
        positions.append(int(match.group(1)))
    return positions


def contiguous_prefix(positions: Sequence[int]) -> int:
    seen, head = set(positions), 0
    while head + 1 in seen:
        head += 1
    return head


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


class CursorWatch:
    """Samples the cursor while a test runs: each sample must be covered by what the receiver already had."""

    def __init__(self, store: ForwarderStore, delivered: Callable[[], int]) -> None:
        self.store, self.delivered = store, delivered
        self.samples = 0
        self.task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            cursor = await self.store.cursor("siem")
            assert cursor <= self.delivered(), f"cursor {cursor} passed the receiver's {self.delivered()}"
            self.samples += 1
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        assert not self.task.done() or self.task.exception() is None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def assert_in_order_at_least_once(positions: Sequence[int], total: int) -> None:
    """Every position arrived; in order of first arrival they are the chain's order (resends repeat, never skip)."""
    assert list(dict.fromkeys(positions)) == list(range(1, total + 1))


async def test_every_sealed_record_reaches_a_tls_syslog_receiver_in_chain_order_across_a_restart(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    receiver = SyslogReceiver(pki.server_context())
    await receiver.start()
    await write_and_seal(engine, 0, 600)
    forwarder, registry = build(engine, f"syslog+tls://{HOST}:{receiver.port}", ca_file=pki.ca_file)
    store = ForwarderStore(engine)
    watch = CursorWatch(store, lambda: contiguous_prefix(syslog_positions(receiver.messages)))
    forwarder.start()
    try:
        await until(lambda: len(receiver.messages) >= 150)
        await receiver.stop()  # mid-stream: frames in flight are cut
        stopped_at = len(receiver.messages)
        await write_and_seal(engine, 600, 200)  # written while the SIEM is away
        await asyncio.sleep(0.5)
        assert await store.cursor("siem") <= contiguous_prefix(syslog_positions(receiver.messages))
        await receiver.start()
        await until(lambda: contiguous_prefix(syslog_positions(receiver.messages)) == 800)
        await until(lambda: registry.get_sample_value("channelgate_audit_forward_lag", {"forwarder": "siem"}) == 0)
    finally:
        await forwarder.stop()
        await watch.stop()
        if receiver.sock.fileno() != -1:
            await receiver.stop()

    positions = syslog_positions(receiver.messages)
    assert_in_order_at_least_once(positions, 800)
    assert stopped_at < 800 and receiver.connections >= 2
    assert await store.cursor("siem") == 800
    assert watch.samples > 10
    assert (registry.get_sample_value("channelgate_audit_forward_failures_total", {"forwarder": "siem"}) or 0) >= 1
    assert cast(float, registry.get_sample_value("channelgate_audit_forwarded_total", {"forwarder": "siem"})) >= 800
    # Every frame is one whole RFC 5424 message: the CR/LF in the agent names did not split one.
    assert all(m.startswith("<86>1 ") and "\n" not in m and "\r" not in m for m in receiver.messages)


async def test_https_forwarding_resends_what_the_collector_refused_and_advances_only_on_2xx(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    collector = HttpsCollector(pki.server_context(), TOKEN)
    await collector.start()
    await write_and_seal(sqlite_engine, 0, 100)
    forwarder, _ = build(sqlite_engine, collector.url, fmt="jsonl", ca_file=pki.ca_file, batch=30)
    store = ForwarderStore(sqlite_engine)
    forwarder.start()
    try:
        await until(lambda: len(collector.lines()) >= 30)
        collector.answer = 503
        await until(lambda: collector.refused >= 2)
        refused_cursor = await store.cursor("siem")
        assert refused_cursor == max(json.loads(line)["chain_pos"] for line in collector.lines())
        await collector.stop()
        await write_and_seal(sqlite_engine, 100, 50)
        await asyncio.sleep(0.3)
        assert await store.cursor("siem") == refused_cursor
        collector.answer = 200
        await collector.start()
        await until(lambda: {json.loads(line)["chain_pos"] for line in collector.lines()} >= set(range(1, 151)))
    finally:
        await forwarder.stop()
        await collector.stop()

    positions = [json.loads(line)["chain_pos"] for line in collector.lines()]
    assert_in_order_at_least_once(positions, 150)
    assert await store.cursor("siem") == 150
    assert {content_type for content_type, _ in collector.bodies} == {"application/x-ndjson"}


@pytest.mark.parametrize("certificate", ["another_ca", "another_name"])
async def test_a_receiver_whose_certificate_is_not_trusted_gets_nothing(
    sqlite_engine: AsyncEngine, tmp_path: Path, certificate: str
) -> None:
    trusted = Pki(tmp_path)
    if certificate == "another_ca":
        context = Pki(tmp_path, name="rogue-ca").server_context()
    else:
        context = trusted.server_context(ip=None, dns="siem.example")
    receiver = SyslogReceiver(context)
    await receiver.start()
    await write_and_seal(sqlite_engine, 0, 10)
    forwarder, registry = build(sqlite_engine, f"syslog+tls://{HOST}:{receiver.port}", ca_file=trusted.ca_file)
    forwarder.start()
    try:
        await until(
            lambda: (
                (registry.get_sample_value("channelgate_audit_forward_failures_total", {"forwarder": "siem"}) or 0) >= 2
            )
        )
    finally:
        await forwarder.stop()
        await receiver.stop()
    assert receiver.messages == []
    assert await ForwarderStore(sqlite_engine).cursor("siem") == 0


async def test_only_one_replica_forwards_and_the_other_takes_over_when_it_stops(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    receiver = SyslogReceiver(None)
    await receiver.start()
    await write_and_seal(engine, 0, 200)
    first, first_metrics = build(engine, f"syslog+tcp://{HOST}:{receiver.port}")
    second, second_metrics = build(engine, f"syslog+tcp://{HOST}:{receiver.port}")
    first.start()
    await until(lambda: len(receiver.messages) > 0)
    second.start()

    def forwarded(registry: CollectorRegistry) -> float:
        return registry.get_sample_value("channelgate_audit_forwarded_total", {"forwarder": "siem"}) or 0

    try:
        await until(lambda: forwarded(first_metrics) + forwarded(second_metrics) == 200)
        assert (forwarded(first_metrics), forwarded(second_metrics)) == (200, 0)
        await first.stop()
        await write_and_seal(engine, 200, 100)
        await until(lambda: forwarded(second_metrics) == 100)
        assert contiguous_prefix(syslog_positions(receiver.messages)) == 300
    finally:
        await first.stop()
        await second.stop()
        await receiver.stop()
    assert sorted(syslog_positions(receiver.messages)) == list(range(1, 301))  # no duplicates without failures


#: Ends the session holding this database's advisory lock (a replica's connection dropped by the network).
KILL_LEASE_HOLDER = text(
    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE granted AND locktype = 'advisory'"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
LEASE_HOLDERS = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@pytest.mark.postgres
async def test_a_replica_whose_lease_connection_dies_stops_and_forwarding_goes_on_without_loss(
    postgres_url: str,
) -> None:
    await upgrade_to_head(postgres_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(postgres_url)))
    receiver = SyslogReceiver(None)
    await receiver.start()
    engine = database.engine
    await write_and_seal(engine, 0, 100)
    first, _ = build(engine, f"syslog+tcp://{HOST}:{receiver.port}")
    second, _ = build(engine, f"syslog+tcp://{HOST}:{receiver.port}")
    first.start()
    second.start()
    try:
        await until(lambda: contiguous_prefix(syslog_positions(receiver.messages)) == 100)
        async with engine.connect() as conn:
            killed = (await conn.execute(KILL_LEASE_HOLDER)).all()
        assert len(killed) == 1  # one replica held the lease
        await write_and_seal(engine, 100, 50)
        await until(lambda: contiguous_prefix(syslog_positions(receiver.messages)) == 150)
        async with engine.connect() as conn:
            holders = (await conn.execute(LEASE_HOLDERS)).scalar()
        assert holders == 1
    finally:
        await first.stop()
        await second.stop()
        await receiver.stop()
        await database.dispose()
    assert set(syslog_positions(receiver.messages)) == set(range(1, 151))
    assert list(dict.fromkeys(syslog_positions(receiver.messages))) == list(range(1, 151))


async def test_stopping_delivers_what_is_sealed_and_the_next_start_resumes_at_the_cursor(
    sqlite_engine: AsyncEngine,
) -> None:
    receiver = SyslogReceiver(None)
    await receiver.start()
    await write_and_seal(sqlite_engine, 0, 120)
    forwarder, _ = build(sqlite_engine, f"syslog+tcp://{HOST}:{receiver.port}", batch=10)
    forwarder.start()
    await forwarder.stop(flush_seconds=10)
    assert syslog_positions(receiver.messages) == list(range(1, 121))

    await write_and_seal(sqlite_engine, 120, 5)
    restarted, _ = build(sqlite_engine, f"syslog+tcp://{HOST}:{receiver.port}")
    restarted.start()
    try:
        await until(lambda: len(receiver.messages) == 125)
    finally:
        await restarted.stop()
        await receiver.stop()
    assert syslog_positions(receiver.messages) == list(range(1, 126))


async def test_unsealed_records_wait_for_the_sealer_and_go_out_once_sealed(sqlite_engine: AsyncEngine) -> None:
    receiver = SyslogReceiver(None)
    await receiver.start()
    repository = AccessLogRepository(sqlite_engine)
    forwarder, _ = build(sqlite_engine, f"syslog+tcp://{HOST}:{receiver.port}")
    try:
        await repository.append([AccessRecord(time=T0, kind="login", agent_name=f"a{n}") for n in range(3)])
        assert await forwarder.forward_once() == 0
        await ChainStore(sqlite_engine).seal(100)
        assert await forwarder.forward_once() == 3
        assert await forwarder.forward_once() == 0
    finally:
        repository.close()
        await forwarder.stop()
        await receiver.stop()
    assert syslog_positions(receiver.messages) == [1, 2, 3]


async def test_a_receiver_that_stops_reading_holds_the_forwarder_at_one_batch_in_flight(
    sqlite_engine: AsyncEngine,
) -> None:
    receiver = SyslogReceiver(None)
    await receiver.start()
    big = "p" * 100_000  # 100 kB a record: the kernel's socket buffers fill after a few dozen
    repository = AccessLogRepository(sqlite_engine)
    await repository.append([AccessRecord(time=T0, kind="request", path=f"/{n}/{big}") for n in range(400)])
    repository.close()
    await ChainStore(sqlite_engine).seal(1000)
    forwarder, _ = build(sqlite_engine, f"syslog+tcp://{HOST}:{receiver.port}", batch=10)
    store = ForwarderStore(sqlite_engine)
    forwarder.start()
    try:
        await until(lambda: len(receiver.messages) >= 10)
        receiver.pause()
        held = await _settled_cursor(store)  # the kernel's socket buffers take a few more batches first
        await asyncio.sleep(1.0)
        assert await store.cursor("siem") == held < 400  # no progress while the receiver does not read
        transport = forwarder._transport._writer.transport  # type: ignore[attr-defined]
        # At most the one batch in flight, never the backlog (400 records, ~80 MB): a batch is written once the
        # last drain returned, which leaves up to the transport's high-water mark of the one before unsent.
        frame = max(len(message.encode()) for message in receiver.messages) + 16  # the length prefix and its space
        assert transport.get_write_buffer_size() <= 10 * frame + transport.get_write_buffer_limits()[1]
        receiver.resume()
        await until(lambda: contiguous_prefix(syslog_positions(receiver.messages)) == 400)
    finally:
        await forwarder.stop()
        await receiver.stop()
    assert sorted(set(syslog_positions(receiver.messages))) == list(range(1, 401))


async def _settled_cursor(store: ForwarderStore) -> int:
    """The forwarder's cursor once it stopped moving for half a second (on a loaded machine the sends that fill
    the socket buffers take longer than a fixed pause)."""
    previous = await store.cursor("siem")
    for _ in range(40):
        await asyncio.sleep(0.5)
        current = await store.cursor("siem")
        if current == previous:
            return current
        previous = current
    raise AssertionError("the forwarder's cursor kept moving while the receiver read nothing")


def _sealed(*positions: int) -> list[AccessRecord]:
    return [AccessRecord(time=T0, kind="request", chain_pos=p) for p in positions]


def test_a_forwarder_token_is_refused_outside_https() -> None:
    with pytest.raises(ValueError, match="only sent over https"):
        ForwarderSettings(name="siem", url="syslog+tcp://siem.example:514", token=SecretStr(TOKEN))


COLLECTOR_PASSWORD = "s3cret-collector-password"


async def test_an_untrusted_collector_certificate_is_reported_by_host_and_port_never_the_urls_password(
    tmp_path: Path,
) -> None:
    trusted = Pki(tmp_path)
    receiver = SyslogReceiver(Pki(tmp_path, name="rogue-ca").server_context())  # any TLS server not trusted
    await receiver.start()
    try:
        url = f"https://siem:{COLLECTOR_PASSWORD}@{HOST}:{receiver.port}/ingest"
        transport = transport_for(ForwarderSettings(name="siem", url=url, ca_file=str(trusted.ca_file)), "text/plain")
        with pytest.raises(ForwardingFailed) as caught:
            await transport.send(["{}"])
        await transport.close()
    finally:
        await receiver.stop()
    # Forwarder._run logs this message at ERROR level.
    assert f"{HOST}:{receiver.port}" in caught.value.message
    assert COLLECTOR_PASSWORD not in caught.value.message


async def test_an_unreachable_checkpoint_collector_is_reported_by_host_and_port_never_the_urls_password() -> None:
    closed = bound_socket()
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connection is refused
    sink = HttpSink(f"https://audit:{COLLECTOR_PASSWORD}@{HOST}:{port}/checkpoints", None)
    try:
        with pytest.raises(CheckpointSinkError) as caught:
            await sink.write("{}")
    finally:
        await sink.aclose()
    assert f"{HOST}:{port}" in caught.value.message and COLLECTOR_PASSWORD not in caught.value.message


@pytest.mark.parametrize("sink", ["http://collector.internal/checkpoints", "file:///var/lib/channelgate/c.jsonl"])
def test_a_checkpoint_sink_token_is_refused_unless_the_sink_is_https(sink: str) -> None:
    with pytest.raises(ValueError, match="only sent over https"):
        CheckpointSettings(sink=sink, sink_token=SecretStr("t" * 40))
    assert CheckpointSettings(sink="https://collector.internal/checkpoints", sink_token=SecretStr("t" * 40)).sink_token


def test_a_collector_takes_a_token_or_a_password_in_its_url_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        CheckpointSettings(sink="https://audit:pw@collector.internal/c", sink_token=SecretStr("t" * 40))
    with pytest.raises(ValueError, match="not both"):
        ForwarderSettings(name="siem", url="https://siem:pw@siem.example/ingest", token=SecretStr(TOKEN))


def test_a_batch_stops_at_the_first_gap_and_a_gap_at_the_cursor_waits_unless_retention_purged_it() -> None:
    assert [r.chain_pos for r in deliverable(_sealed(4, 5, 7, 8), 3, 0)] == [4, 5]
    with pytest.raises(GapInChain, match=r"5\.\.5"):
        deliverable(_sealed(6, 7), 4, 0)
    assert [r.chain_pos for r in deliverable(_sealed(11, 12), 4, 10)] == [11, 12]
    assert deliverable([], 9, 0) == []
