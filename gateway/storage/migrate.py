"""Schema migrations, configured in code so they run from an installed package without an alembic.ini.

Every gateway replica may call ``upgrade_to_head`` at start-up: on PostgreSQL a transaction-scoped advisory
lock lets one replica migrate while the others wait, and on SQLite ``BEGIN IMMEDIATE`` does the same.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.database import create_engine, read_transaction, storage_errors, write_transaction

MIGRATIONS = Path(__file__).resolve().with_name("migrations")

#: Arbitrary 64-bit key of the PostgreSQL advisory lock that serialises concurrent migrations.
_MIGRATION_LOCK = 0x6368_616E_6E65_6C67  # "channelg"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts; ``url`` is only needed for offline SQL output."""
    config = Config()
    # ConfigParser interpolates "%": escape it in the path.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if url is not None:
        config.attributes["url"] = url
    return config


def head_revision() -> str:
    """The revision the packaged migrations end at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at (None when never migrated); run it with ``conn.run_sync``."""
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    if connection.dialect.name == "sqlite":
        # Migrations run with foreign keys off (batch mode); refuse to commit one that broke them.
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise StorageError(f"migration left {len(broken)} rows violating foreign keys; rolled back")


async def upgrade_to_head(target: str | DatabaseSettings) -> None:
    """Bring the database (a URL, or ``[database]`` with its TLS and password file) to the newest schema in one
    transaction (a no-op when it is there). A migration may outlast ``statement_timeout_seconds``: it runs
    without the statement timeouts."""
    settings = DatabaseSettings(url=SecretStr(target)) if isinstance(target, str) else target
    settings = settings.model_copy(update={"statement_timeout_seconds": None, "command_timeout_seconds": None})
    engine = create_engine(settings, enforce_foreign_keys=False)
    try:
        with storage_errors(engine, "database migration"):
            async with write_transaction(engine) as conn:
                await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()


async def database_revision(url: str) -> str | None:
    """The revision of the database at ``url``, for ``channelgate check`` and readiness probes."""
    engine = create_engine(DatabaseSettings(url=SecretStr(url)))
    try:
        async with read_transaction(engine) as conn:
            return await conn.run_sync(current_revision)
    finally:
        await engine.dispose()
