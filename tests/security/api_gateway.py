"""The gateway with its admin API and SCIM, served by uvicorn on a loopback socket from a thread of its own.

Property-based runners (schemathesis, Hypothesis state machines) drive their cases synchronously, one HTTP call
after another; the gateway therefore runs its own event loop in a background thread (SQLite, memory sessions, no
consoles, no OpenID provider behind it: nothing here signs in through a browser). ``run`` hands a coroutine to
that loop, for reaching inside (creating a SCIM token, reading the access log) between calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.services import Services
from gateway.settings import Settings
from gateway.timeutil import utcnow
from tests.components.asgi_server import bound_socket
from tests.components.inprocess import running_gateway
from tests.components.ports import LOOPBACK

T = TypeVar("T")
START_TIMEOUT = 30.0


@dataclass
class ThreadedGateway:
    url: str
    admin_token: str
    scim_token: str
    services: Services
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coroutine`` on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


def api_settings(base_dir: Path, url: str, admin_token: str) -> Settings:
    return Settings.model_validate(
        {
            "server": {"host": LOOPBACK, "public_url": url, "insecure_dev_cookies": True},
            "database": {"url": f"sqlite+aiosqlite:///{base_dir / 'channelgate.db'}"},
            "oidc": {"issuer": f"http://{LOOPBACK}:9/unused", "client_id": "unused", "client_secret": "unused"},
            "admin": {"tokens": [admin_token]},
        }
    )


@contextlib.contextmanager
def threaded_gateway() -> Iterator[ThreadedGateway]:
    """The gateway on a held loopback socket, served from a background thread until the block ends."""
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-api-"))
    sock = bound_socket()
    url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    admin_token = secrets.token_urlsafe(24)
    settings = api_settings(base_dir, url, admin_token)
    loop = asyncio.new_event_loop()
    started: Future[Services] = Future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with running_gateway(settings, sock) as services:
                started.set_result(services)
                await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="channelgate-api", daemon=True)
    thread.start()
    try:
        services = started.result(START_TIMEOUT)
        scim_token = asyncio.run_coroutine_threadsafe(services.scim_tokens.create("idp", utcnow()), loop).result(10)
        yield ThreadedGateway(url, admin_token, scim_token, services, loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(START_TIMEOUT)
        loop.close()
        sock.close()
        shutil.rmtree(base_dir, ignore_errors=True)
