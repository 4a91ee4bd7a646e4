"""``channelgate agents deprovision`` with in-process sessions asks the running gateway through its admin API: the
agent's name reaches it as one path segment whatever it holds, and a connection that fails after reaching a
gateway is an error, never a reason to fall back to the database alone (the gateway's sessions would live on)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.cli.agents import _deprovision_via_api
from gateway.errors import ChannelgateError
from gateway.settings import Settings, load_settings
from tests.components.ports import LOOPBACK, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "channelgate.example.toml"
TOKEN = "t" * 40


def _settings(port: int) -> Settings:
    return load_settings(
        EXAMPLE,
        environ={
            "CHANNELGATE_ADMIN__TOKENS": f'["{TOKEN}"]',
            "CHANNELGATE_SERVER__HOST": LOOPBACK,
            "CHANNELGATE_SERVER__PORT": str(port),
        },
    )


@pytest.fixture
async def admin_api() -> AsyncIterator[tuple[int, list[str]]]:
    """A stand-in of the gateway's admin endpoint that records the raw path it was asked."""
    asked: list[str] = []

    async def deprovision(request: web.Request) -> web.Response:
        asked.append(request.raw_path)
        return web.json_response({"agent": "?", "active": False})

    app = web.Application()
    app.router.add_post("/{tail:.*}", deprovision)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        yield port, asked
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("alice", "alice"),
        ("x/../alice", "x%2F%2E%2E%2Falice"),
        ("..", "%2E%2E"),
        ("team#alice", "team%23alice"),
        ("a b?c", "a%20b%3Fc"),
    ],
)
async def test_the_agents_name_reaches_the_gateway_as_one_encoded_segment(
    admin_api: tuple[int, list[str]], name: str, path: str
) -> None:
    port, asked = admin_api
    await _deprovision_via_api(_settings(port), name, "left")
    assert asked == [f"/.channelgate/admin/agents/{path}/deprovision"]


async def test_a_gateway_that_drops_the_connection_is_an_error_not_a_database_only_deprovisioning() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(drop, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ChannelgateError, match="may or may not have taken place"):
            await _deprovision_via_api(_settings(port), "alice", "left")
    finally:
        server.close()
        await server.wait_closed()
