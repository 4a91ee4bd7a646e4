"""The Redis session store built from ``[sessions]`` as an operator writes it, against real servers: through Redis
Sentinel (passwords from files, the primary followed across a failover) and over TLS with a client certificate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.errors import SessionStoreUnavailable
from gateway.sessions.base import RESYNC_AGENT_ID, SessionData, SessionState, SessionStore, session_key
from gateway.sessions.factory import create_session_store
from gateway.settings import SessionSettings
from tests.components.pki import TestCa
from tests.components.redis_sentinel import MASTER_NAME, PRIMARY_PASSWORD, SENTINEL_PASSWORD, SentinelGroup, TlsRedis

pytestmark = pytest.mark.redis

T = TypeVar("T")
ALICE = SessionData(agent_id="agent-alice", user_name="alice", issuer="https://idp.example.com", subject="sub-a")


def _secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _store(sessions: dict[str, Any]) -> SessionStore:
    settings = SessionSettings.model_validate({"store": "redis", **sessions})
    return create_session_store(settings, "replica-test")


async def _eventually(call: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """The first answer of ``call`` that is not a fail-closed refusal (a failover drops the old connections)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except SessionStoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as group:
        yield group


@pytest.fixture
async def sentinel_store(sentinel_group: SentinelGroup, tmp_path: Path) -> AsyncIterator[SessionStore]:
    store = _store(
        {
            "redis": {
                "password_file": str(_secret(tmp_path / "redis-password", PRIMARY_PASSWORD)),
                "socket_timeout_seconds": 0.5,
                "sentinel": {
                    "master_name": MASTER_NAME,
                    "addresses": [sentinel_group.sentinel_address],
                    "password_file": str(_secret(tmp_path / "sentinel-password", SENTINEL_PASSWORD)),
                },
            }
        }
    )
    yield store
    await store.close()


async def test_sessions_and_revocations_work_through_sentinel(sentinel_store: SessionStore) -> None:
    session = await sentinel_store.create(ALICE, 1000.0)
    assert (await sentinel_store.lookup(session.id, 1001.0)).state is SessionState.VALID

    async with aclosing(sentinel_store.revocations()) as feed:
        listening = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.3)  # the subscription is confirmed before the first message is awaited
        count, revocation = await sentinel_store.revoke_agent(ALICE.agent_id)
        heard = await asyncio.wait_for(listening, 5)

    assert count == 1
    assert heard.revocation_id == revocation.revocation_id
    assert (await sentinel_store.lookup(session.id, 1002.0)).state is SessionState.MISSING


async def test_after_a_failover_the_next_heartbeat_moves_every_connection_to_the_new_primary(
    sentinel_group: SentinelGroup, sentinel_store: SessionStore
) -> None:
    before = await sentinel_store.create(ALICE, 1000.0)
    await sentinel_store.heartbeat()
    old_primary = sentinel_group.primary_port_now()
    # Replication is asynchronous: promote the replica only once it holds the session (else the failover itself
    # loses it, which is Redis's documented window, not what this test is about).
    replica = sentinel_group.replica_port if old_primary == sentinel_group.primary_port else sentinel_group.primary_port
    for _ in range(200):
        if "cg:s:" + session_key(before.id) in sentinel_group.keys(replica, "cg:s:*"):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the replica never received the session")

    async with aclosing(sentinel_store.revocations()) as feed:
        first = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.3)
        new_primary = sentinel_group.failover()
        # The demoted primary still answers the connections made before: the heartbeat must leave it at once.
        assert sentinel_group.role(old_primary) == "master"
        await _eventually(lambda: sentinel_store.heartbeat())

        looked_up = await _eventually(lambda: sentinel_store.lookup(before.id, 1001.0))
        assert looked_up.state is SessionState.VALID  # replicated before the failover
        after = await _eventually(lambda: sentinel_store.create(ALICE, 1002.0))
        assert any(key.startswith("cg:s:") for key in sentinel_group.keys(new_primary, "cg:s:*"))
        assert sentinel_group.keys(new_primary, "cg:s:*") - sentinel_group.keys(old_primary, "cg:s:*")

        # The revocation channel resubscribes on the new primary (a resync marker first: pub/sub kept nothing).
        assert (await asyncio.wait_for(first, 15)).agent_id == RESYNC_AGENT_ID
        await asyncio.sleep(0.3)
        count, revocation = await _eventually(lambda: sentinel_store.revoke_agent(ALICE.agent_id))
        heard = await asyncio.wait_for(anext(feed), 5)

    assert count == 2
    assert heard.revocation_id == revocation.revocation_id
    assert (await sentinel_store.lookup(after.id, 1003.0)).state is SessionState.MISSING


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(pki: TestCa) -> Iterator[TlsRedis]:
    server = TlsRedis(pki.ca_file, *pki.issue("redis-server"))
    try:
        server.start(*pki.issue("redis-probe", client=True))
        yield server
    finally:
        server.close()


async def test_sessions_work_over_tls_with_a_client_certificate(
    tls_redis: TlsRedis, pki: TestCa, tmp_path: Path
) -> None:
    cert, key = pki.issue("gateway-client", client=True)
    store = _store(
        {
            "redis_url": tls_redis.url,
            "redis": {
                "password_file": str(_secret(tmp_path / "redis-password", PRIMARY_PASSWORD)),
                "ca_file": str(pki.ca_file),
                "cert_file": str(cert),
                "key_file": str(key),
            },
        }
    )
    try:
        session = await store.create(ALICE, 1000.0)
        assert (await store.lookup(session.id, 1001.0)).state is SessionState.VALID
    finally:
        await store.close()


async def test_a_redis_certificate_from_another_ca_fails_closed(
    tls_redis: TlsRedis, pki: TestCa, tmp_path: Path
) -> None:
    stranger = TestCa(tmp_path, name="another-ca")
    cert, key = pki.issue("gateway-client-2", client=True)
    store = _store(
        {
            "redis_url": tls_redis.url,
            "redis": {"password": PRIMARY_PASSWORD, "ca_file": str(stranger.ca_file), "cert_file": str(cert),
                      "key_file": str(key)},
        }
    )  # fmt: skip
    try:
        with pytest.raises(SessionStoreUnavailable) as refused:
            await store.ping()
    finally:
        await store.close()
    assert PRIMARY_PASSWORD not in f"{refused.value!s} {refused.value.detail}"


async def test_without_a_client_certificate_redis_refuses_and_the_store_fails_closed(
    tls_redis: TlsRedis, pki: TestCa
) -> None:
    store = _store({"redis_url": tls_redis.url, "redis": {"password": PRIMARY_PASSWORD, "ca_file": str(pki.ca_file)}})
    try:
        with pytest.raises(SessionStoreUnavailable):
            await store.ping()
    finally:
        await store.close()
