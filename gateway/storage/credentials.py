"""Encrypted channel credentials at rest: only the vault's AES-256-GCM output is stored, never plaintext.

The row keeps the id of the vault key that sealed it, so a key rotation can re-encrypt key by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import RowMapping, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.schema import channel_credentials


@dataclass(frozen=True, slots=True)
class StoredCredential:
    channel: str
    key_id: str
    nonce: bytes
    ciphertext: bytes
    updated_at: datetime

    def __repr__(self) -> str:
        # Ciphertext is not a secret on its own, but it has no business in a log line either.
        return f"StoredCredential(channel={self.channel!r}, key_id={self.key_id!r}, updated_at={self.updated_at!r})"


def _credential(row: RowMapping) -> StoredCredential:
    return StoredCredential(
        channel=row["channel"],
        key_id=row["key_id"],
        nonce=bytes(row["nonce"]),
        ciphertext=bytes(row["ciphertext"]),
        updated_at=from_db(row["updated_at"]),
    )


class ChannelCredentialRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(
        self,
        channel: str,
        key_id: str,
        nonce: bytes,
        ciphertext: bytes,
        now: datetime,
        *,
        conn: AsyncConnection | None = None,
    ) -> StoredCredential:
        """Store or replace the channel's credential in one statement (upsert)."""
        values = {
            "channel": channel,
            "key_id": key_id,
            "nonce": nonce,
            "ciphertext": ciphertext,
            "updated_at": to_db(now),
        }
        async with write_transaction(self._engine, conn) as c:
            insert = pg_insert if c.dialect.name == "postgresql" else sqlite_insert
            statement = insert(channel_credentials).values(values)
            statement = statement.on_conflict_do_update(
                index_elements=[channel_credentials.c.channel],
                set_={name: statement.excluded[name] for name in values if name != "channel"},
            )
            await c.execute(statement)
        return StoredCredential(channel, key_id, nonce, ciphertext, from_db(to_db(now)))

    async def get(self, channel: str, *, conn: AsyncConnection | None = None) -> StoredCredential | None:
        query = select(channel_credentials).where(channel_credentials.c.channel == channel)
        async with read_transaction(self._engine, conn) as c:
            row = (await c.execute(query)).mappings().first()
        return None if row is None else _credential(row)

    async def list_channels(self, *, conn: AsyncConnection | None = None) -> list[str]:
        """Channels that have a stored credential, sorted."""
        query = select(channel_credentials.c.channel).order_by(channel_credentials.c.channel)
        async with read_transaction(self._engine, conn) as c:
            return list((await c.execute(query)).scalars())

    async def delete(self, channel: str, *, conn: AsyncConnection | None = None) -> bool:
        """Remove the channel's credential; False when there was none."""
        statement = delete(channel_credentials).where(channel_credentials.c.channel == channel)
        async with write_transaction(self._engine, conn) as c:
            result = await c.execute(statement)
        return result.rowcount > 0
