"""The channel credential repository's contract on SQLite and PostgreSQL: one sealed credential per channel,
stored as bytes and replaced by the next put, listed by channel and deleted one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.credentials import ChannelCredentialRepository

NOW = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


async def test_credential_put_stores_bytes_and_replaces_the_previous_one(engine: AsyncEngine) -> None:
    credentials = ChannelCredentialRepository(engine)

    await credentials.put("chat", "k1", b"\x00nonce-1", b"\xffsealed-1", NOW)
    await credentials.put("chat", "k2", b"\x00nonce-2", b"\xffsealed-2", NOW + timedelta(days=1))
    stored = await credentials.get("chat")

    assert stored is not None
    assert (stored.key_id, stored.nonce, stored.ciphertext) == ("k2", b"\x00nonce-2", b"\xffsealed-2")
    assert stored.updated_at == NOW + timedelta(days=1)
    assert "sealed" not in repr(stored)


async def test_credentials_are_listed_by_channel_and_deleted_one_by_one(engine: AsyncEngine) -> None:
    credentials = ChannelCredentialRepository(engine)
    for channel in ["voice", "chat", "email"]:
        await credentials.put(channel, "k1", b"n", b"c", NOW)

    assert await credentials.list_channels() == ["chat", "email", "voice"]
    assert await credentials.delete("email") is True
    assert await credentials.delete("email") is False
    assert await credentials.get("email") is None
    assert await credentials.list_channels() == ["chat", "voice"]
