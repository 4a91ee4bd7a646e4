"""The gateway in this test process: a real uvicorn server on a held loopback socket, with its ``Services`` at hand.

For tests that need to reach inside (freeze the clock, swap the session store, count records) while still
speaking real HTTP to the gateway. Child-process replicas are in ``tests.components.gateway``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn

from gateway.app import create_app
from gateway.forward_auth_protocol import forward_auth_protocol
from gateway.services import Services, open_gateway
from gateway.settings import Settings
from gateway.storage.migrate import upgrade_to_head
from tests.components.asgi_server import start_server


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, sock: socket.socket) -> AsyncIterator[Services]:
    """Migrate the database, serve ``settings`` on ``sock`` (bound before anyone was told the URL) and stop the
    server afterwards, its lifespan closing the services."""
    await upgrade_to_head(settings.database.url.get_secret_value())
    services = open_gateway(settings)
    app = create_app(settings, services)
    config = uvicorn.Config(
        app,
        http=forward_auth_protocol(app),  # as `channelgate serve` runs it
        log_level="warning",
        proxy_headers=False,
        lifespan="on",
        ws="websockets-sansio",
    )
    server, task = await start_server(config, sock)
    try:
        yield services
    finally:
        server.should_exit = True
        await task
