"""Per-agent connector secrets at rest (table ``agent_secrets``): only the vault's AES-256-GCM output is stored.

Keyed by (agent, channel, name): an OAuth connector keeps one row per token it obtained, a seats connector the
seat's API key, a cookie-jar connector the console's cookies. ``meta`` holds what may be read without
decrypting (expiry, token type), never a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class AgentSecretRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, secret: StoredAgentSecret, *, conn: AsyncConnection | None = None) -> None:
        """Store or replace one secret (upsert on agent, channel, name)."""
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
        statement = delete(agent_secrets).where(
            agent_secrets.c.agent_id == agent_id, agent_secrets.c.channel == channel
        )
        if name is not None:
            statement = statement.where(agent_secrets.c.name == name)
        async with write_transaction(self._engine, conn) as c:
            result = await c.execute(statement)
        return result.rowcount
