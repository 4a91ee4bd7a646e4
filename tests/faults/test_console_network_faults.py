"""Network faults between the gateway and a channel console, through our fault proxy (issue 8, item 3).

The shared stack's mail route goes to the mail console through ``FaultProxy`` with a 1 s route timeout; the
gateway replicas are real ``channelgate serve`` processes. Latency past the timeout and a console that swallows
requests are 504s that come back within the timeout; a reset or a refused connection is a 502 that says the
console could not be reached; every one leaves an access-log record. After a storm of them the gateway holds no
more descriptors, threads, upstream connections or asyncio tasks than before, and serves again as soon as the
fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.components.echo_gateway import eventually
from tests.components.fault_proxy import FaultProxy, Mode
from tests.components.gateway import GatewayStack
from tests.components.postgres_server import PostgresServer
from tests.faults.conftest import DATABASE, FAULTED_CHANNEL, FAULTED_ROUTE_TIMEOUT, JSON, no_traceback, sign_in

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.oidc, pytest.mark.timeout(90)]

ROUTE_TIMEOUT = FAULTED_ROUTE_TIMEOUT
#: Slack for a loaded 2-core machine between the gateway's timer firing and the answer reaching the test.
ANSWER_SLACK = 0.8
PREFIX = f"/{FAULTED_CHANNEL}/"


@pytest.fixture
async def proxy(stack: GatewayStack, fault_proxy_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(target_port=stack.console_ports[FAULTED_CHANNEL], port=fault_proxy_port) as started:
        yield started


@pytest.fixture
async def agent(stack: GatewayStack, proxy: FaultProxy) -> AsyncIterator[httpx.AsyncClient]:
    """alice (in mail-agents), served through the proxy."""
    client = await sign_in(stack, "alice")
    client.timeout = httpx.Timeout(10.0)
    try:
        await eventually(lambda: _served(stack, client))
        yield client
    finally:
        await client.aclose()


def _url(stack: GatewayStack, marker: str) -> str:
    """A faulted-route URL whose query key names the request in the access log (values are never logged)."""
    return f"{stack.url()}{PREFIX}?{marker}"


async def _served(stack: GatewayStack, client: httpx.AsyncClient, marker: str = "ok") -> bool:
    response = await client.get(_url(stack, marker), headers=JSON)
    return response.status_code == 200


async def _timed(client: httpx.AsyncClient, url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(url, headers=JSON)
    return response, time.monotonic() - started


def _records(postgres: PostgresServer, marker: str) -> list[tuple[int, str]]:
    """(status, detail) of the request records of ``marker``."""
    assert re.fullmatch(r"\w+", marker), marker  # an identifier: safe inside the SQL text
    rows = postgres.execute(
        "SELECT status, coalesce(detail::text, '') FROM access_log "  # noqa: S608 - marker checked above
        f"WHERE kind = 'request' AND path = '{PREFIX}?{marker}'",
        DATABASE,
    )
    return [(int(status), detail) for status, detail in (line.split("|", 1) for line in rows.splitlines())]


async def _recorded(postgres: PostgresServer, marker: str) -> list[tuple[int, str]]:
    """The records of ``marker``'s requests, once the batched writer committed them."""
    rows: list[tuple[int, str]] = await eventually(lambda: asyncio.to_thread(_records, postgres, marker), 5)
    return rows


async def _cut_pooled(proxy: FaultProxy) -> None:
    """Reset every open connection and give the gateway a moment to drop them from its pool, so the next
    request has to connect (and meets the fault of a new connection)."""
    await proxy.reset_all()
    await asyncio.sleep(0.2)


async def test_latency_past_the_route_timeout_is_a_504_within_the_timeout_and_is_recorded(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, fault_postgres: PostgresServer
) -> None:
    proxy.latency = ROUTE_TIMEOUT + 2.0

    response, elapsed = await _timed(agent, _url(stack, "slow"))

    assert response.status_code == 504, response.text[:300]
    no_traceback(response)
    assert response.json()["error"] == "upstream_timeout"
    assert f"within {ROUTE_TIMEOUT:g} second" in response.json()["message"]
    assert ROUTE_TIMEOUT - 0.1 <= elapsed < ROUTE_TIMEOUT + ANSWER_SLACK
    [(status, detail)] = await _recorded(fault_postgres, "slow")
    assert status == 504 and detail is not None and "upstream_timeout" in detail

    await proxy.clear()
    assert await _served(stack, agent, "after_slow")


async def test_a_reset_connection_is_a_502_saying_the_console_could_not_be_reached(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, fault_postgres: PostgresServer
) -> None:
    resets_before = proxy.counts.resets
    await proxy.set_mode("reset")

    response, elapsed = await _timed(agent, _url(stack, "reset"))

    assert proxy.counts.resets > resets_before
    assert response.status_code == 502, response.text[:300]
    no_traceback(response)
    assert response.json()["error"] == "upstream_error"
    assert "could not be reached" in response.json()["message"]
    assert elapsed < ROUTE_TIMEOUT  # a reset is answered at once, not after the timeout
    [(status, detail)] = await _recorded(fault_postgres, "reset")
    assert status == 502 and detail is not None and "upstream_error" in detail

    await proxy.clear()
    assert await _served(stack, agent, "after_reset")


async def test_a_blackholed_console_is_a_504_after_the_route_timeout(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, fault_postgres: PostgresServer
) -> None:
    await proxy.set_mode("blackhole")
    await _cut_pooled(proxy)  # a new connection: accepted by the proxy, never forwarded

    response, elapsed = await _timed(agent, _url(stack, "blackhole"))

    assert proxy.counts.blackholed >= 1
    assert response.status_code == 504, response.text[:300]
    no_traceback(response)
    assert ROUTE_TIMEOUT - 0.1 <= elapsed < ROUTE_TIMEOUT + ANSWER_SLACK
    [(status, _)] = await _recorded(fault_postgres, "blackhole")
    assert status == 504
    # The gateway gave up on the connection: the proxy sees it closed, nothing is left hanging.
    assert await proxy.wait_until_idle() == 0

    await proxy.clear()
    assert await _served(stack, agent, "after_blackhole")


async def test_a_refused_connection_is_a_502_at_once(
    stack: GatewayStack, proxy: FaultProxy, agent: httpx.AsyncClient, fault_postgres: PostgresServer
) -> None:
    await proxy.set_mode("refuse")
    await _cut_pooled(proxy)

    response, elapsed = await _timed(agent, _url(stack, "refused"))

    assert response.status_code == 502, response.text[:300]
    no_traceback(response)
    assert "could not be reached" in response.json()["message"]
    assert elapsed < ROUTE_TIMEOUT
    [(status, _)] = await _recorded(fault_postgres, "refused")
    assert status == 502

    await proxy.clear()
    assert await _served(stack, agent, "after_refused")


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _socket_peers(pid: int) -> dict[int, int]:
    """The process's TCP sockets, counted by remote port (from /proc/PID/fd and /proc/PID/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    peers: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[9] in inodes:
                    port = int(fields[2].rsplit(":", 1)[1], 16)
                    peers[port] = peers.get(port, 0) + 1
    return peers


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def _tasks(stack: GatewayStack) -> int:
    async with httpx.AsyncClient() as client:
        text = (await client.get(stack.url() + "/.channelgate/metrics")).text
    found = re.search(r"^channelgate_event_loop_tasks (\S+)$", text, re.MULTILINE)
    assert found is not None, "no channelgate_event_loop_tasks in /metrics"
    return int(float(found.group(1)))


async def _burst(stack: GatewayStack, client: httpx.AsyncClient, marker: str, size: int) -> list[int]:
    responses = await asyncio.gather(*(client.get(_url(stack, f"{marker}_{i}"), headers=JSON) for i in range(size)))
    return [response.status_code for response in responses]


async def _usage(stack: GatewayStack, proxy: FaultProxy) -> dict[str, int]:
    await asyncio.sleep(0.5)  # let closed sockets and finished request tasks go
    pid = stack.replica_pid(0)
    peers = _socket_peers(pid)
    return {
        "descriptors": _descriptors(pid),
        # Sockets toward the faulted console: the ones a fault could leak.
        "console_sockets": peers.get(proxy.port, 0),
        "sockets": sum(peers.values()),
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

    # Nothing toward the faulted console is left open, and nothing else grows beyond what pools may add under a
    # loaded machine (database and Redis pools open a connection or two more when requests overlap differently).
    # The pool may keep up to one idle keep-alive connection per concurrent request of the last burst; a leak per
    # fault (about a hundred per round) would be far more.
    assert after["console_sockets"] <= max(before["console_sockets"], CONCURRENT), (before, after)
    assert after["descriptors"] - after["sockets"] <= before["descriptors"] - before["sockets"] + 2, (before, after)
    assert after["descriptors"] <= before["descriptors"] + 6, (before, after)
    assert after["threads"] <= before["threads"], (before, after)
    assert after["tasks"] <= before["tasks"] + 2, (before, after)
    assert after["proxy_connections"] <= max(before["proxy_connections"], CONCURRENT), (before, after)
