"""Anonymous requests with long paths through the real gateway: refused with a 414 before any work, and recorded
with a bounded path, so neither memory nor the retained, chained access log grows with what a client spells."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import httpx

from gateway.proxy.paths import MAX_LOGGED_PATH, MAX_PATH_BYTES
from gateway.settings import load_settings
from tests.components.asgi_server import bound_socket
from tests.components.gateway import config_toml
from tests.components.inprocess import running_gateway
from tests.components.ports import LOOPBACK


async def test_an_anonymous_long_path_is_a_414_and_its_record_keeps_a_bounded_path() -> None:
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-long-paths-"))
    sock = bound_socket()
    url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    database = base_dir / "channelgate.db"
    text = config_toml(
        base_dir=base_dir, public_url=url, issuer=f"http://{LOOPBACK}:9/idp",
        database_url=f"sqlite+aiosqlite:///{database}", console_ports={"chat": 9, "phone": 9, "mail": 9},
        admin_token="long-paths-admin-token-0123456789-abcdef",
    )  # fmt: skip
    (base_dir / "channelgate.toml").write_text(text, encoding="utf-8")
    settings = load_settings(base_dir / "channelgate.toml", environ={})
    async with running_gateway(settings, sock) as services:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            statuses = {
                (await client.get(f"/chat/{n}-" + "a" * 15_000, headers={"accept": "text/html"})).status_code
                for n in range(20)
            }
            at_limit = await client.get("/chat/" + "a" * (MAX_PATH_BYTES - 6), headers={"accept": "text/html"})
        await services.audit.flush()
    assert statuses == {414}
    assert at_limit.status_code == 302  # not too long: the usual login redirect
    with sqlite3.connect(database) as connection:
        rows, longest = connection.execute(
            "SELECT count(*), max(length(path)) FROM access_log WHERE kind = 'request'"
        ).fetchone()
    assert rows == 21 and longest == MAX_LOGGED_PATH
