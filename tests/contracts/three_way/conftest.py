"""The storage with a direct ``sqlite3`` path (pipeline, agent secrets, trigger) runs each contract test three
ways: SQLite direct, SQLite through the SQLAlchemy engine, and PostgreSQL. ``database_url`` here overrides the
two-way one of tests/contracts/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.pipeline import PipelineRepository


@pytest.fixture(
    params=[
        pytest.param("direct", id="sqlite"),
        pytest.param("engine", id="sqlite-engine"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path}/data/channelgate.db"


@pytest.fixture
def pipeline(engine: AsyncEngine, backend: str) -> PipelineRepository:
    """The pipeline's storage on ``backend``'s path (the direct ``sqlite3`` one for "direct")."""
    return PipelineRepository(engine, direct=backend == "direct")
