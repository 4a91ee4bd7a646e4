"""The gateway in this test process: a real uvicorn server on a free loopback port, with its ``Services`` at hand.

For tests that need to reach inside (freeze the clock, swap the session store, count records) while still
speaking real HTTP to the gateway. Child-process replicas are in ``tests.components.gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from gateway.app import create_app
from gateway.services import Services, open_gateway
from gateway.settings import Settings
from gateway.storage.migrate import upgrade_to_head
from tests.components.ports import LOOPBACK


@dataclass
class RunningGateway:
    url: str
    services: Services


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, port: int) -> AsyncIterator[RunningGateway]:
    """Migrate the database, serve ``settings`` on ``port`` and stop the server afterwards."""
    await upgrade_to_head(settings.database.url.get_secret_value())
    services = open_gateway(settings)
    app = create_app(settings, services)
    config = uvicorn.Config(
        app, host=LOOPBACK, port=port, log_level="warning", proxy_headers=False, lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the gateway stopped before it started")
            await asyncio.sleep(0.01)
        yield RunningGateway(f"http://{LOOPBACK}:{port}", services)
    finally:
        server.should_exit = True
        await task
