"""The access log's writer process killed under load (SQLite: gateway/storage/sqlite_batch_process.py).

A ``channelgate serve`` on SQLite writes its request records through a child process. Clients keep requesting
while that child is SIGKILLed: every request is still answered, the gateway starts another writer, and every
answered request has exactly one record in the access log — none lost with the dead child, none written twice
by the retry — in a chain that ``channelgate audit verify`` accepts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.components.echo_gateway import eventually
from tests.components.gateway import GatewayStack
from tests.faults.conftest import JSON, audit_queue, running_stack, sign_in

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(120)]

WRITER_MODULE = "gateway.storage.sqlite_batch_process"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[GatewayStack]:
    """One replica on SQLite (the writer process is SQLite's), no Redis: in-process sessions."""
    database = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    with running_stack(database_url=database, redis_url=None, replicas=1, upstreams={}, route_timeouts={}) as stack:
        yield stack


def _writers(parent: int) -> list[int]:
    """The gateway's access-log writer children."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if WRITER_MODULE.encode() in cmdline:
                found.append(int(child))
    return found


async def _hammer(client: httpx.AsyncClient, url: str, answered: list[str], stop: asyncio.Event) -> None:
    number = 0
    while not stop.is_set():
        marker = f"writercrash{id(answered)}x{number}"
        response = await client.get(f"{url}/chat/?{marker}", headers=JSON)
        assert response.status_code == 200, response.text[:200]
        answered.append(marker)
        number += 1


async def _drained(stack: GatewayStack) -> bool:
    return await audit_queue(stack) == 0


async def test_a_killed_access_log_writer_loses_no_record_and_writes_none_twice(stack: GatewayStack) -> None:
    gateway_pid = stack._gateways[0].pid  # the test looks for the real child process
    assert gateway_pid is not None
    client = await sign_in(stack, "bob")
    answered: list[list[str]] = [[], [], []]
    stop = asyncio.Event()
    try:
        hammers = [asyncio.create_task(_hammer(client, stack.url(0), seen, stop)) for seen in answered]
        deadline = time.monotonic() + 20
        while not (writers := _writers(gateway_pid)):
            assert time.monotonic() < deadline, "the gateway started no access-log writer process"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        os.kill(writers[0], signal.SIGKILL)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*hammers)
    finally:
        stop.set()
        await client.aclose()
    await eventually(lambda: _drained(stack), timeout=30)

    markers = [marker for seen in answered for marker in seen]
    assert len(markers) > 50
    assert _writers(gateway_pid) not in ([], writers)  # another writer took over
    with sqlite3.connect(stack.database_url.removeprefix("sqlite+aiosqlite:///")) as connection:
        rows = connection.execute(
            "SELECT path FROM access_log WHERE kind = 'request' AND path LIKE '/chat/?writercrash%'"
        ).fetchall()
    recorded = [path.removeprefix("/chat/?") for (path,) in rows]
    assert sorted(recorded) == sorted(markers)  # every answered request once: none lost, none twice
    verified = stack.cli("audit", "verify", "--json", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
