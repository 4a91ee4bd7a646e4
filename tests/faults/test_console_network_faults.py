"""Network faults between the gateway and a channel console, through our fault proxy (issue 8, item 3).

The chat route goes to the chat console through ``FaultProxy`` with a 1 s route timeout; the gateway is a real
``channelgate serve`` process. Latency past the timeout and a console that swallows requests are 504s that
come back within the timeout; a reset or a refused connection is a 502 that says the console could not be
reached; every one leaves an access-log record. After a storm of them the gateway holds no more descriptors,
upstream connections or asyncio tasks than before, and serves again as soon as the fault is gone.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.components.echo_gateway import eventually
from tests.components.fault_proxy import FaultProxy, Mode
from tests.components.gateway import GatewayStack
from tests.components.ports import LOOPBACK, free_port
from tests.faults.conftest import JSON, no_traceback, running_stack, sign_in

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

ROUTE_TIMEOUT = 1.0
#: Slack for a loaded 2-core machine between the gateway's timer firing and the answer reaching the test.
ANSWER_SLACK = 0.8


@pytest.fixture(scope="module")
def proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def database_file() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="channelgate-faults-"))
    yield directory / "channelgate.db"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(proxy_port: int, database_file: Path) -> Iterator[GatewayStack]:
    """One replica on SQLite with in-memory sessions; its chat route goes through the fault proxy."""
    with running_stack(
        database_url=f"sqlite+aiosqlite:///{database_file}",
        redis_url=None,
        replicas=1,
        upstreams={"chat": f"http://{LOOPBACK}:{proxy_port}"},
        route_timeout_seconds=ROUTE_TIMEOUT,
    ) as started:
        yield started


@pytest.fixture
async def proxy(stack: GatewayStack, proxy_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(target_port=stack.console_ports["chat"], port=proxy_port) as started:
        yield started


@pytest.fixture
async def agent(stack: GatewayStack, proxy: FaultProxy) -> AsyncIterator[httpx.AsyncClient]:
    client = await sign_in(stack, "bob")
    client.timeout = httpx.Timeout(10.0)
    try:
        await eventually(lambda: _served(stack, client))
        yield client
    finally:
        await client.aclose()


async def _served(stack: GatewayStack, client: httpx.AsyncClient, marker: str = "ok") -> bool:
    response = await client.get(f"{stack.url()}/chat/?{marker}", headers=JSON)
    return response.status_code == 200


async def _timed(client: httpx.AsyncClient, url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(url, headers=JSON)
    return response, time.monotonic() - started


def _records(database: Path, marker: str) -> list[tuple[int, str | None]]:
    """(status, detail) of the request records whose path carries ``marker`` as its query key."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT status, detail FROM access_log WHERE kind = 'request' AND path = ?", (f"/chat/?{marker}",)
        ).fetchall()
    return [(int(status), detail) for status, detail in rows]


async def _recorded(database: Path, marker: str) -> list[tuple[int, str | None]]:
    """The records of ``marker``'s requests, once the batched writer committed them."""
    rows: list[tuple[int, str | None]] = await eventually(lambda: asyncio.to_thread(_records, database, marker), 5)
    return rows


async def _cut_pooled(proxy: FaultProxy) -> None:
    """Reset every open connection and give the gateway a moment to drop them from its pool, so the next
    request has to connect (and meets the fault of a new connection)."""
    await proxy.reset_all()
    await asyncio.sleep(0.2)


async def test_latency_past_the_route_timeout_is_a_504_within_the_timeout_and_is_recorded(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, database_file: Path
) -> None:
    proxy.latency = ROUTE_TIMEOUT + 2.0

    response, elapsed = await _timed(agent, f"{stack.url()}/chat/?slow")

    assert response.status_code == 504, response.text[:300]
    no_traceback(response)
    assert response.json()["error"] == "upstream_timeout"
    assert f"within {ROUTE_TIMEOUT:g} second" in response.json()["message"]
    assert ROUTE_TIMEOUT - 0.1 <= elapsed < ROUTE_TIMEOUT + ANSWER_SLACK
    [(status, detail)] = await _recorded(database_file, "slow")
    assert status == 504 and detail is not None and "upstream_timeout" in detail

    await proxy.clear()
    assert await _served(stack, agent, "after_slow")


async def test_a_reset_connection_is_a_502_saying_the_console_could_not_be_reached(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, database_file: Path
) -> None:
    resets_before = proxy.counts.resets
    await proxy.set_mode("reset")

    response, elapsed = await _timed(agent, f"{stack.url()}/chat/?reset")

    assert proxy.counts.resets > resets_before
    assert response.status_code == 502, response.text[:300]
    no_traceback(response)
    assert response.json()["error"] == "upstream_error"
    assert "could not be reached" in response.json()["message"]
    assert elapsed < ROUTE_TIMEOUT  # a reset is answered at once, not after the timeout
    [(status, detail)] = await _recorded(database_file, "reset")
    assert status == 502 and detail is not None and "upstream_error" in detail

    await proxy.clear()
    assert await _served(stack, agent, "after_reset")


async def test_a_blackholed_console_is_a_504_after_the_route_timeout(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, database_file: Path
) -> None:
    await proxy.set_mode("blackhole")
    await _cut_pooled(proxy)  # a new connection: accepted by the proxy, never forwarded

    response, elapsed = await _timed(agent, f"{stack.url()}/chat/?blackhole")

    assert proxy.counts.blackholed >= 1
    assert response.status_code == 504, response.text[:300]
    no_traceback(response)
    assert ROUTE_TIMEOUT - 0.1 <= elapsed < ROUTE_TIMEOUT + ANSWER_SLACK
    [(status, _)] = await _recorded(database_file, "blackhole")
    assert status == 504
    # The gateway gave up on the connection: the proxy sees it closed, nothing is left hanging.
    assert await proxy.wait_until_idle() == 0

    await proxy.clear()
    assert await _served(stack, agent, "after_blackhole")


async def test_a_refused_connection_is_a_502_at_once(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, database_file: Path
) -> None:
    await proxy.set_mode("refuse")
    await _cut_pooled(proxy)

    response, elapsed = await _timed(agent, f"{stack.url()}/chat/?refused")

    assert response.status_code == 502, response.text[:300]
    no_traceback(response)
    assert "could not be reached" in response.json()["message"]
    assert elapsed < ROUTE_TIMEOUT
    [(status, _)] = await _recorded(database_file, "refused")
    assert status == 502

    await proxy.clear()
    assert await _served(stack, agent, "after_refused")


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def _tasks(stack: GatewayStack) -> int:
    async with httpx.AsyncClient() as client:
        text = (await client.get(stack.url() + "/.channelgate/metrics")).text
    found = re.search(r"^channelgate_event_loop_tasks (\S+)$", text, re.MULTILINE)
    assert found is not None, "no channelgate_event_loop_tasks in /metrics"
    return int(float(found.group(1)))


async def _burst(stack: GatewayStack, client: httpx.AsyncClient, marker: str, size: int) -> list[int]:
    responses = await asyncio.gather(
        *(client.get(f"{stack.url()}/chat/?{marker}_{i}", headers=JSON) for i in range(size))
    )
    return [response.status_code for response in responses]


async def _usage(stack: GatewayStack, proxy: FaultProxy) -> dict[str, int]:
    await asyncio.sleep(0.5)  # let closed sockets and finished request tasks go
    pid = stack.replica_pid(0)
    return {
        "descriptors": _descriptors(pid),
        "threads": _threads(pid),
        "tasks": await _tasks(stack),
        "proxy_connections": proxy.open_connections,
    }


#: (proxy mode, latency, the status every request of the burst gets)
FAULTS: list[tuple[Mode, float, int]] = [
    ("forward", ROUTE_TIMEOUT + 1.0, 504),  # latency
    ("blackhole", 0.0, 504),
    ("reset", 0.0, 502),
    ("refuse", 0.0, 502),
]
CONCURRENT = 8


async def _fault_round(stack: GatewayStack, proxy: FaultProxy, client: httpx.AsyncClient, number: int) -> None:
    """Each fault once, hit by ``CONCURRENT`` requests at a time; then the same concurrency served again."""
    for mode, latency, expected in FAULTS:
        proxy.latency = latency
        await proxy.set_mode(mode)
        if mode in ("blackhole", "refuse"):
            await _cut_pooled(proxy)
        statuses = await _burst(stack, client, f"storm_{mode}_{number}", CONCURRENT)
        assert statuses == [expected] * CONCURRENT, (mode, latency, statuses)
        await proxy.clear()
    for _ in range(2):
        assert await _burst(stack, client, f"recovered_{number}", CONCURRENT) == [200] * CONCURRENT


async def test_a_storm_of_faults_leaks_no_descriptor_thread_connection_or_task_and_the_gateway_recovers(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient
) -> None:
    # A first round sizes everything that is made once (the upstream pool at this concurrency, the resolver's
    # threads); three more must then leave the gateway exactly as big, or a fault leaks something.
    await _fault_round(stack, proxy, agent, 0)
    before = await _usage(stack, proxy)
    for number in range(1, 4):
        await _fault_round(stack, proxy, agent, number)
    after = await _usage(stack, proxy)

    assert after["descriptors"] <= before["descriptors"] + 2, (before, after)
    assert after["threads"] <= before["threads"], (before, after)
    assert after["tasks"] <= before["tasks"] + 2, (before, after)
    assert after["proxy_connections"] <= max(before["proxy_connections"], CONCURRENT), (before, after)
