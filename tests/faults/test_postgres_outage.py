"""PostgreSQL stopped and started again under a running gateway replica (issue 8, item 3).

During the outage the admin API and the CLI refuse to deprovision with a clear 503 (no stack trace, nothing half
done) and succeed once the database is back. Requests keep being answered around the restart and not one loses
its access-log record: the batch writer keeps them and retries, and the chain verifies afterwards
(``channelgate audit verify``).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.components.echo_gateway import eventually
from tests.components.gateway import GatewayStack
from tests.components.postgres_server import PostgresServer
from tests.faults.conftest import DATABASE, JSON, admin_get, admin_post, audit_queue, no_traceback, sign_in, status_of

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.oidc, pytest.mark.timeout(90)]


async def _ready(stack: GatewayStack) -> bool:
    return await status_of(stack, "/.channelgate/readyz") == 200


async def test_deprovisioning_answers_503_with_a_message_while_postgres_is_down_and_succeeds_once_it_is_back(
    stack: GatewayStack, fault_postgres: PostgresServer
) -> None:
    agent = await sign_in(stack, "agent06")
    try:
        await asyncio.to_thread(fault_postgres.stop)

        for refused in (
            await admin_get(stack, "/agents/agent06"),
            await admin_post(stack, "/agents/agent06/deprovision", {"reason": "left"}),
        ):
            assert refused.status_code == 503, refused.text
            no_traceback(refused)
            assert refused.json()["error"] == "storage_unavailable"
            assert "database" in refused.json()["message"]
        by_cli = await asyncio.to_thread(stack.cli, "agents", "deprovision", "agent06", "--reason", "left", check=False)
        assert by_cli.returncode != 0
        assert "Traceback" not in by_cli.stderr and "database" in by_cli.stderr, by_cli.stderr
        assert await status_of(stack, "/.channelgate/readyz") == 503

        await asyncio.to_thread(fault_postgres.start)
        await eventually(lambda: _ready(stack), timeout=15)

        # Nothing was half done: the agent is still active and served until a deprovisioning succeeds.
        status = await admin_get(stack, "/agents/agent06")
        assert status.status_code == 200 and status.json()["active"] is True, status.text
        assert (await agent.get(stack.url() + "/chat/", headers=JSON)).status_code == 200
        done = await admin_post(stack, "/agents/agent06/deprovision", {"reason": "left"})
        assert done.status_code == 200, done.text
        assert done.json()["active"] is False and done.json()["sessions_revoked"] == 1
        assert (await agent.get(stack.url() + "/chat/", headers=JSON)).status_code == 401
    finally:
        await agent.aclose()


async def _hammer(
    client: httpx.AsyncClient, stack: GatewayStack, name: str, answers: dict[str, int], stop: asyncio.Event
) -> None:
    """Requests one after another, each with its own query key, until ``stop``; every answer is noted."""
    number = 0
    while not stop.is_set():
        marker = f"{name}_{number}"
        answers[marker] = (await client.get(f"{stack.url()}/chat/?{marker}", headers=JSON)).status_code
        number += 1
        await asyncio.sleep(0.01)


def _request_records(postgres: PostgresServer, database: str) -> dict[str, list[int]]:
    rows = postgres.execute(
        "SELECT substr(path, 8), status FROM access_log WHERE kind = 'request' AND path LIKE '/chat/?pgload%'",
        database,
    )
    found: dict[str, list[int]] = {}
    for line in rows.splitlines():
        marker, status = line.split("|")
        found.setdefault(marker, []).append(int(status))
    return found


async def test_requests_across_a_postgres_restart_all_keep_their_access_log_record_and_the_chain_verifies(
    stack: GatewayStack, fault_postgres: PostgresServer
) -> None:
    agent = await sign_in(stack, "agent07")
    answers: dict[str, int] = {}
    stop = asyncio.Event()
    try:
        load = [asyncio.create_task(_hammer(agent, stack, f"pgload{n}", answers, stop)) for n in range(2)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fault_postgres.stop)
        await asyncio.sleep(1.0)
        waiting = await audit_queue(stack)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fault_postgres.start)
        await eventually(lambda: _ready(stack), timeout=15)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*load)
    finally:
        stop.set()
        await agent.aclose()

    # Requests were answered before, during and after the outage (from the session in Redis), their records
    # queued meanwhile; each has its record once the queue could be written again: none lost, none twice.
    assert waiting > 0, "no record was waiting for the database during the outage"
    assert set(answers.values()) == {200}
    wanted = {marker: [status] for marker, status in answers.items()}
    found = await eventually(
        lambda: _all_recorded(fault_postgres, DATABASE, wanted),
        timeout=15,
    )
    assert found == wanted

    async def sealed() -> dict[str, object] | None:
        result = await asyncio.to_thread(stack.cli, "audit", "verify", "--json", check=False)
        report: dict[str, object] = json.loads(result.stdout)
        return report if report["unsealed"] == 0 else None

    report = await eventually(sealed, timeout=15)
    assert report["ok"] is True and report["problem"] is None, report
    verified = await asyncio.to_thread(stack.cli, "audit", "verify", check=False)
    assert verified.returncode == 0 and verified.stdout.startswith("OK:"), verified.stdout + verified.stderr


async def _all_recorded(
    postgres: PostgresServer, database: str, wanted: dict[str, list[int]]
) -> dict[str, list[int]] | None:
    found = await asyncio.to_thread(_request_records, postgres, database)
    return found if found.keys() >= wanted.keys() else None
