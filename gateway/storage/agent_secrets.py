"""Per-agent connector secrets at rest (table ``agent_secrets``): only the vault's AES-256-GCM output is stored.

Keyed by (agent, channel, name): an OAuth connector keeps one row per token it obtained, a seats connector the
seat's API key, a cookie-jar connector the console's cookies. ``meta`` holds what may be read without
decrypting (expiry, token type), never a secret.

Connectors read and write these rows on every deprovisioning step (a bulk offboarding: a few thousand a
second), so on a SQLite file the calls without a caller's transaction go through ``sqlite3`` directly: reads
inline on the event loop, writes in the file's group commit (``gateway.storage.sqlite_writer``), each row exactly
as the engine writes it (the meta as JSON text, timestamps in SQLAlchemy's DATETIME text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.schema import agent_secrets
from gateway.storage.sqlite_batches import sqlite_datetime
from gateway.storage.sqlite_writer import SqliteAccess, from_sqlite, sqlite_access

_COLUMNS = "agent_id, channel, name, key_id, nonce, ciphertext, updated_at, meta"
_GET = f"SELECT {_COLUMNS} FROM agent_secrets WHERE agent_id = ? AND channel = ? AND name = ?"  # noqa: S608 - our column names
_LIST = f"SELECT {_COLUMNS} FROM agent_secrets WHERE agent_id = ? AND channel = ? ORDER BY name"  # noqa: S608 - our column names
_PUT = (
    f"INSERT INTO agent_secrets ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608 - our column names
    "ON CONFLICT (agent_id, channel, name) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, "
    "ciphertext = excluded.ciphertext, updated_at = excluded.updated_at, meta = excluded.meta"
)
_DELETE_ALL = "DELETE FROM agent_secrets WHERE agent_id = ? AND channel = ?"
_DELETE_ONE = _DELETE_ALL + " AND name = ?"


@dataclass(frozen=True, slots=True)
class StoredAgentSecret:
    agent_id: str
    channel: str
    name: str
    key_id: str
    nonce: bytes
    ciphertext: bytes
    updated_at: datetime
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"StoredAgentSecret(agent_id={self.agent_id!r}, channel={self.channel!r}, name={self.name!r}, "
            f"key_id={self.key_id!r})"
        )


def _secret(row: RowMapping) -> StoredAgentSecret:
    return StoredAgentSecret(
        agent_id=row["agent_id"],
        channel=row["channel"],
        name=row["name"],
        key_id=row["key_id"],
        nonce=bytes(row["nonce"]),
        ciphertext=bytes(row["ciphertext"]),
        updated_at=from_db(row["updated_at"]),
        meta=dict(row["meta"] or {}),
    )


def _direct_secret(row: Sequence[Any]) -> StoredAgentSecret:
    return StoredAgentSecret(
        agent_id=row[0],
        channel=row[1],
        name=row[2],
        key_id=row[3],
        nonce=bytes(row[4]),
        ciphertext=bytes(row[5]),
        updated_at=from_sqlite(row[6]),
        meta=dict(json.loads(row[7]) or {}),
    )


class AgentSecretRepository:
    """Per-agent secrets through the engine, or by ``sqlite3`` directly on a SQLite file unless ``direct=False``
    (both meet tests/contracts/three_way/test_agent_secrets_contract.py)."""

    def __init__(self, engine: AsyncEngine, *, direct: bool = True) -> None:
        self._engine = engine
        self._use_direct = direct
        self._access: SqliteAccess | None = None

    @property
    def _direct(self) -> SqliteAccess | None:
        """Looked up on first use (building a repository touches nothing), then kept."""
        if self._access is None and self._use_direct:
            self._access = sqlite_access(self._engine)
            self._use_direct = self._access is not None
        return self._access

    async def put(self, secret: StoredAgentSecret, *, conn: AsyncConnection | None = None) -> None:
        """Store or replace one secret (upsert on agent, channel, name)."""
        if conn is None and self._direct is not None:
            row = (
                secret.agent_id,
                secret.channel,
                secret.name,
                secret.key_id,
                secret.nonce,
                secret.ciphertext,
                sqlite_datetime(secret.updated_at),
                json.dumps(dict(secret.meta)),
            )
            await self._direct.writer.run(lambda c: c.execute(_PUT, row).rowcount)
            return
        values = {
            "agent_id": secret.agent_id,
            "channel": secret.channel,
            "name": secret.name,
            "key_id": secret.key_id,
            "nonce": secret.nonce,
            "ciphertext": secret.ciphertext,
            "meta": dict(secret.meta),
            "updated_at": to_db(secret.updated_at),
        }
        keys = ("agent_id", "channel", "name")
        async with write_transaction(self._engine, conn) as c:
            insert = pg_insert if c.dialect.name == "postgresql" else sqlite_insert
            statement = insert(agent_secrets).values(values)
            statement = statement.on_conflict_do_update(
                index_elements=[agent_secrets.c[k] for k in keys],
                set_={name: statement.excluded[name] for name in values if name not in keys},
            )
            await c.execute(statement)

    async def get(
        self, agent_id: str, channel: str, name: str, *, conn: AsyncConnection | None = None
    ) -> StoredAgentSecret | None:
        if conn is None and self._direct is not None:
            found = await self._direct.reader.one(_GET, (agent_id, channel, name))
            return None if found is None else _direct_secret(found)
        query = select(agent_secrets).where(
            agent_secrets.c.agent_id == agent_id, agent_secrets.c.channel == channel, agent_secrets.c.name == name
        )
        async with read_transaction(self._engine, conn) as c:
            row = (await c.execute(query)).mappings().first()
        return None if row is None else _secret(row)

    async def list(
        self, agent_id: str, channel: str, *, conn: AsyncConnection | None = None
    ) -> list[StoredAgentSecret]:
        """Every secret of the agent at the channel, by name."""
        if conn is None and self._direct is not None:
            rows = await self._direct.reader.all(_LIST, (agent_id, channel))
            return [_direct_secret(row) for row in rows]
        query = (
            select(agent_secrets)
            .where(agent_secrets.c.agent_id == agent_id, agent_secrets.c.channel == channel)
            .order_by(agent_secrets.c.name)
        )
        async with read_transaction(self._engine, conn) as c:
            return [_secret(row) for row in (await c.execute(query)).mappings()]

    async def delete(
        self, agent_id: str, channel: str, name: str | None = None, *, conn: AsyncConnection | None = None
    ) -> int:
        """Remove one secret, or all of the agent's at the channel when ``name`` is None; returns how many."""
        if conn is None and self._direct is not None:
            sql, values = (
                (_DELETE_ALL, (agent_id, channel)) if name is None else (_DELETE_ONE, (agent_id, channel, name))
            )
            return await self._direct.writer.run(lambda c: c.execute(sql, values).rowcount)
        statement = delete(agent_secrets).where(
            agent_secrets.c.agent_id == agent_id, agent_secrets.c.channel == channel
        )
        if name is not None:
            statement = statement.where(agent_secrets.c.name == name)
        async with write_transaction(self._engine, conn) as c:
            result = await c.execute(statement)
        return result.rowcount
