"""The echo console used by the gateway integration tests records exactly what reached it."""

from __future__ import annotations

import httpx

from tests.components.echo_gateway import EchoConsole
from tests.components.ports import LOOPBACK


async def test_the_echo_console_records_what_reached_it_and_answers_with_its_headers() -> None:
    console = EchoConsole("chat")
    await console.start()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{LOOPBACK}:{console.port}/echo?x=1", headers={"X-Probe": "1"})
        assert response.json()["path"] == "/echo"
        assert console.seen[0].values("x-probe") == ["1"]
    finally:
        await console.stop()
