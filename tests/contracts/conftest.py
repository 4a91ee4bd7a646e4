"""Fixtures of the storage contract suites: each test runs against SQLite (a temporary file) and a real PostgreSQL
server (``database_url``, from tests/components/fixtures.py), on a database created by the migrations (not
``metadata.create_all``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.settings import DatabaseSettings
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head


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
