"""Sessions a Redis restart brings back are ended again (gateway/deprovision/revived.py).

Redis acknowledges a write before it is durable: here it runs with RDB snapshots only, as some operators run it
(the same holds for the last second of ``appendfsync everysec`` after a host crash, or a failover to a replica
that lagged). A snapshot taken while the agent was signed in, then a deprovisioning, then a crash: the restarted
Redis holds the ended session again, valid. Nobody uses it during the minute in which every session is also checked
against its agent's row, so before the sweep it stayed valid afterwards; now the heartbeat after the outage ends
it, writes a record saying why, and the check against agents' rows lasts until that sweep has completed.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.storage.access_log import AccessQuery, AccessRecord
from tests.components.echo_gateway import Deployment, deployment, eventually
from tests.components.oidc_provider import OidcProviderFactory
from tests.components.ports import LOOPBACK
from tests.components.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.oidc, pytest.mark.timeout(90)]
JSON = {"Accept": "application/json"}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test alone (no append-only file), so it can be killed and restarted from a snapshot."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def gateway(own_redis: RedisServer, oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory, redis_url=own_redis.url) as deployed:
        yield deployed


def _command(server: RedisServer, *words: str) -> bytes:
    """One RESP command, its raw reply."""
    payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection((LOOPBACK, server.port), timeout=5.0) as sock:
        sock.sendall(payload.encode())
        return sock.recv(65536)


def _session_keys(server: RedisServer) -> int:
    reply = _command(server, "EVAL", "return #redis.call('KEYS', 'cg:s:*')", "0")
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


async def test_a_session_a_restarted_redis_brings_back_is_ended_again_without_anyone_using_it(
    gateway: Deployment, own_redis: RedisServer
) -> None:
    carol = await gateway.login("carol")
    assert (await carol.get(gateway.url + "/phone/echo", headers=JSON)).status_code == 200
    assert _command(own_redis, "SAVE").startswith(b"+OK")  # the snapshot holds carol's session
    await gateway.services.killer.deprovision("carol", reason="left the company", actor="t", source="cli")
    assert _session_keys(own_redis) == 0

    own_redis.kill()
    own_redis.start()  # from the snapshot: the session is back
    assert _session_keys(own_redis) == 1

    # Nobody asks with carol's cookie: the next heartbeat after the outage ends the session all the same.
    await eventually(lambda: _none_left(own_redis), timeout=20)
    [recovered] = await eventually(lambda: _recovery_records(gateway), timeout=10)
    assert recovered.detail == {"source": "session-store-recovery", "sessions": 1}
    assert recovered.reason is not None and "revived" in recovered.reason

    async def swept() -> bool:  # the record is written before the turn's replay of saved ends completes it
        return not gateway.services.revived.due()

    await eventually(swept, timeout=10)
    # On a new connection: the revocation closes carol's open ones, which can race her client reusing its idle one.
    cookie = {gateway.services.cookies.session_name: str(carol.cookies.get(gateway.services.cookies.session_name))}
    async with httpx.AsyncClient(cookies=cookie) as again:
        assert (await again.get(gateway.url + "/phone/echo", headers=JSON)).status_code == 401


async def _none_left(server: RedisServer) -> bool:
    return _session_keys(server) == 0


async def _recovery_records(gateway: Deployment) -> list[AccessRecord]:
    records = await gateway.services.access_log.search(AccessQuery(agent_name="carol", kind="sessions_revoked"))
    return [r for r in records if (r.detail or {}).get("source") == "session-store-recovery"]
