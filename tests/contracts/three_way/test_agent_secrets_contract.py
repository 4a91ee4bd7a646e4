"""The agent_secrets contract, on SQLite by ``sqlite3`` directly, on SQLite through the engine, and on PostgreSQL:
a secret is stored, replaced on the same (agent, channel, name), listed by name, deleted one by one or all at
once, and reads back byte for byte with its meta, whichever way wrote it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.agent_secrets import AgentSecretRepository, StoredAgentSecret

T0 = datetime(2026, 12, 4, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def secrets(engine: AsyncEngine, backend: str) -> AgentSecretRepository:
    return AgentSecretRepository(engine, direct=backend == "direct")


def _secret(
    name: str, ciphertext: bytes, *, agent: str = "a1", channel: str = "chat", **meta: object
) -> StoredAgentSecret:
    return StoredAgentSecret(agent, channel, name, "k1", b"\x00nonce\xff", ciphertext, T0, meta)


async def test_a_secret_reads_back_byte_for_byte_with_its_meta(secrets: AgentSecretRepository) -> None:
    stored = _secret("access:1", b"\x00\x01sealed\xff", kind="access", expires_at=1.5e9, refused=False, grant=None)
    await secrets.put(stored)
    assert await secrets.get("a1", "chat", "access:1") == stored
    assert await secrets.get("a1", "chat", "other") is None
    assert await secrets.get("a1", "mail", "access:1") is None


async def test_putting_the_same_name_again_replaces_the_secret(secrets: AgentSecretRepository) -> None:
    await secrets.put(_secret("api_key", b"old", seat_id="s1"))
    newer = StoredAgentSecret("a1", "chat", "api_key", "k2", b"n2", b"new", T0 + timedelta(seconds=1), {})
    await secrets.put(newer)
    assert await secrets.list("a1", "chat") == [newer]


async def test_listing_is_by_name_within_one_agent_and_channel(secrets: AgentSecretRepository) -> None:
    for name in ("refresh:2", "access:9", "access:1"):
        await secrets.put(_secret(name, name.encode()))
    await secrets.put(_secret("access:0", b"x", agent="a2"))
    await secrets.put(_secret("access:0", b"x", channel="mail"))
    assert [s.name for s in await secrets.list("a1", "chat")] == ["access:1", "access:9", "refresh:2"]


async def test_deleting_one_secret_or_all_of_a_channel_says_how_many(secrets: AgentSecretRepository) -> None:
    for name in ("password", "cookie_jar/1", "cookie_jar/2"):
        await secrets.put(_secret(name, b"x", channel="mail"))
    await secrets.put(_secret("access:1", b"x"))
    assert await secrets.delete("a1", "mail", "password") == 1
    assert await secrets.delete("a1", "mail", "password") == 0
    assert await secrets.delete("a1", "mail", "") == 0  # an empty name is a name, never "all of them"
    assert await secrets.delete("a1", "mail") == 2
    assert await secrets.list("a1", "mail") == []
    assert [s.name for s in await secrets.list("a1", "chat")] == ["access:1"]


async def test_what_one_path_wrote_the_other_reads_alike(engine: AsyncEngine, backend: str) -> None:
    direct, through_engine = AgentSecretRepository(engine), AgentSecretRepository(engine, direct=False)
    await direct.put(_secret("one", b"1", kind="refresh", obtained_at=T0.timestamp()))
    await through_engine.put(_secret("two", b"2", kind="access", expires_at=None))
    for reader in (direct, through_engine):
        assert [(s.name, s.ciphertext, dict(s.meta), s.updated_at) for s in await reader.list("a1", "chat")] == [
            ("one", b"1", {"kind": "refresh", "obtained_at": T0.timestamp()}, T0),
            ("two", b"2", {"kind": "access", "expires_at": None}, T0),
        ]
