"""Fixtures of the storage contract suites: each test runs against SQLite (a temporary file) and a real PostgreSQL
server (``database_url``, from tests/components/fixtures.py), on a database created by the migrations (not
``metadata.create_all``); each session-store contract test against the embedded store and a real Redis
(``backend``); the Redis session store's outage tests get a Redis server of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.sessions.base import SessionStore
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import DatabaseSettings
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from tests.components.redis_server import RedisServer
from tests.components.session_stores import ABSOLUTE, IDLE, Backend, redis_store


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    yield database
    await database.dispose()


@pytest.fixture
def engine(database: Database) -> AsyncEngine:
    return database.engine


@pytest.fixture
def repo(engine: AsyncEngine) -> AgentRepository:
    return AgentRepository(engine)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of the test's own, so killing it disturbs no other test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def own_redis_store(own_redis: RedisServer) -> AsyncIterator[RedisSessionStore]:
    """Replica "replica-a"'s store on ``own_redis``."""
    store = redis_store(own_redis.url, "replica-a")
    yield store
    await store.close()


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[RedisSessionStore, RedisSessionStore]]:
    """Two gateway replicas' stores, "replica-a" and "replica-b", on the suite's Redis."""
    a, b = redis_store(redis_url, "replica-a"), redis_store(redis_url, "replica-b")
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def backend(backend_url: str | None) -> AsyncIterator[Backend]:
    """One session store of each kind: the embedded one, and replica "replica-a"'s on the suite's Redis."""
    store: SessionStore
    if backend_url is None:
        store = MemorySessionStore(IDLE, ABSOLUTE, "replica-a")
    else:
        store = redis_store(backend_url, "replica-a")
    yield Backend("memory" if backend_url is None else "redis", store, backend_url)
    await store.close()
