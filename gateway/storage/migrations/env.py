"""Alembic environment: runs on the connection ``gateway.storage.migrate`` hands over, or opens its own.

SQLite uses batch mode (``render_as_batch``) because its ALTER TABLE cannot drop or change columns; batch
mode recreates the table instead, which is why migrations run with SQLite foreign keys off.
"""

from __future__ import annotations

import asyncio

from alembic import context
from pydantic import SecretStr
from sqlalchemy.engine import Connection

from gateway.settings import DatabaseSettings
from gateway.storage.database import create_engine
from gateway.storage.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_own_engine(url: str) -> None:
    engine = create_engine(DatabaseSettings(url=SecretStr(url)), enforce_foreign_keys=False)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _offline() -> None:
    context.configure(
        url=config.attributes["url"],
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=str(config.attributes["url"]).startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _offline()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    asyncio.run(_run_on_own_engine(config.attributes["url"]))
