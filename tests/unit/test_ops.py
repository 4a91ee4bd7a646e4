"""/.channelgate/readyz, which every front-proxy sample passes from the public side: its status is for probes and
load balancers, its body names the failed check but never the database's address or the replica's host."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.ops import public_replica_id, readyz
from gateway.storage.database import Database

#: Unreachable (port 1), with everything an attacker mapping the network would like to read.
DOWN_URL = "postgresql+asyncpg://cg_prod_user:pw-s3cret@127.0.0.1:1/channelgate_prod"
REPLICA_ID = "gw-7.db-subnet.corp.example-3fa2b1c0"  # services.new_replica_id(): host name, "-", 8 hex digits


class _Sessions:
    async def ping(self) -> None:
        return None


@pytest.fixture
async def down() -> AsyncIterator[Database]:
    database = Database(create_async_engine(DOWN_URL))
    try:
        yield database
    finally:
        await database.dispose()


async def _readyz(database: Database) -> httpx.Response:
    app = Starlette(routes=[Route("/.channelgate/readyz", readyz)])
    app.state.services = SimpleNamespace(database=database, sessions=_Sessions(), replica_id=REPLICA_ID)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        return await client.get("/.channelgate/readyz")


async def test_readyz_with_the_database_down_names_the_check_but_not_the_database_or_the_replicas_host(
    down: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="channelgate"):
        answer = await _readyz(down)
    assert answer.status_code == 503
    assert answer.json() == {
        "ready": False,
        "replica": "3fa2b1c0",
        "checks": {"database": "storage_unavailable", "sessions": "ok"},
    }
    for disclosed in ("cg_prod_user", "127.0.0.1", ":1", "channelgate_prod", "postgresql", "corp.example", "gw-7"):
        assert disclosed not in answer.text, disclosed
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "@127.0.0.1:1/channelgate_prod" in logged and "pw-s3cret" not in logged  # for the operator


def test_a_replicas_public_id_is_the_random_part_of_its_id() -> None:
    assert public_replica_id(REPLICA_ID) == "3fa2b1c0"
