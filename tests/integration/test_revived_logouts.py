"""Logouts a Redis restart undid are ended again (gateway/deprovision/revived.py, gateway/deprovision/logouts.py).

Redis runs with RDB snapshots only, as in test_revived_sessions.py: a snapshot taken while the agent was signed
in, then a logout, then a crash. The restarted Redis holds the logged-out session again, valid — and the agent is
still active, so the check against agents' rows cannot tell. A copy of the cookie (the browser dropped its own)
would work again until the session's timeouts. The logout was remembered in the database before it was reported
done, so the sweep after the outage ends that session again and records it; a session nobody logged out stays.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.storage.access_log import AccessQuery, AccessRecord
from tests.components.browserless_login import login
from tests.components.echo_gateway import Deployment, deployment, eventually
from tests.components.oidc_provider import DEMO_PASSWORD, OidcProviderFactory
from tests.components.redis_server import RedisServer
from tests.integration.test_backchannel_logout import _post, _token
from tests.integration.test_backchannel_logout_by_sid import _session_of
from tests.integration.test_revived_sessions import _command, _session_keys

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


async def _with_cookie(gateway: Deployment, cookie: str) -> int:
    """A request carrying a copy of the session cookie (kept by another tab, a proxy log, an attacker)."""
    async with httpx.AsyncClient() as other:
        name = gateway.services.cookies.session_name
        response = await other.get(gateway.url + "/chat/", headers=JSON | {"Cookie": f"{name}={cookie}"})
    return response.status_code


def _restart_from_snapshot(server: RedisServer) -> None:
    server.kill()
    server.start()


async def _recovery_records(gateway: Deployment, agent_name: str) -> list[AccessRecord]:
    records = await gateway.services.access_log.search(AccessQuery(agent_name=agent_name, kind="sessions_revoked"))
    return [r for r in records if (r.detail or {}).get("source") == "session-store-recovery"]


async def test_a_logout_a_restarted_redis_undid_is_ended_again_and_the_copy_of_the_cookie_refused(
    gateway: Deployment, own_redis: RedisServer
) -> None:
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    copy = str(alice.cookies.get(gateway.services.cookies.session_name))
    assert await _with_cookie(gateway, copy) == 200
    assert _command(own_redis, "SAVE").startswith(b"+OK")  # the snapshot holds alice's session
    logout = await alice.post(gateway.url + "/.channelgate/logout", headers={"Origin": gateway.url})
    assert logout.status_code == 303
    assert await _with_cookie(gateway, copy) == 401
    assert _session_keys(own_redis) == 1

    _restart_from_snapshot(own_redis)
    assert _session_keys(own_redis) == 2  # alice's logged-out session is back

    # Nobody uses the copy: the heartbeat's sweep after the outage ends the session all the same.
    await eventually(lambda: _keys_left(own_redis, 1), timeout=20)
    [recovered] = await eventually(lambda: _recovery_records(gateway, "alice"), timeout=10)
    assert recovered.detail is not None and recovered.detail["ended"] == "logout"
    assert recovered.reason is not None and "logged-out" in recovered.reason
    assert await _with_cookie(gateway, copy) == 401
    assert (await bob.get(gateway.url + "/chat/", headers=JSON)).status_code == 200  # never logged out
    assert await _recovery_records(gateway, "bob") == []


async def test_a_copy_of_a_logged_out_cookie_used_before_the_sweep_after_a_restart_is_refused(
    gateway: Deployment, own_redis: RedisServer
) -> None:
    """The sweep runs at the heartbeat's next turn (up to 5 s later); the copy is used at once after Redis answers
    again: refused by the check on use, which reads the saved logout (gateway/deprovision/revived.py)."""
    alice = await gateway.login("alice")
    copy = str(alice.cookies.get(gateway.services.cookies.session_name))
    assert _command(own_redis, "SAVE").startswith(b"+OK")
    logout = await alice.post(gateway.url + "/.channelgate/logout", headers={"Origin": gateway.url})
    assert logout.status_code == 303

    _restart_from_snapshot(own_redis)
    assert _session_keys(own_redis) == 1  # the logged-out session is back

    async def answered() -> int | None:  # the first request may meet the connection the restart broke (503)
        status = await _with_cookie(gateway, copy)
        return None if status == 503 else status

    assert await eventually(answered, timeout=10) == 401
    assert _session_keys(own_redis) == 0  # ended by the refusal


async def test_a_backchannel_logout_by_sid_a_restarted_redis_undid_is_ended_again(
    gateway: Deployment, own_redis: RedisServer
) -> None:
    laptop, phone = await gateway.login("alice"), await gateway.login("alice")
    sid = (await _session_of(gateway, laptop)).data.idp_session_id
    assert sid is not None and (await _session_of(gateway, phone)).data.idp_session_id != sid
    assert _command(own_redis, "SAVE").startswith(b"+OK")
    assert (await _post(gateway, _token(gateway, sid=sid))).status_code == 200
    assert (await laptop.get(gateway.url + "/chat/", headers=JSON)).status_code == 401

    _restart_from_snapshot(own_redis)
    assert _session_keys(own_redis) == 2

    await eventually(lambda: _keys_left(own_redis, 1), timeout=20)
    [recovered] = await eventually(lambda: _recovery_records(gateway, "alice"), timeout=10)
    assert recovered.detail is not None and recovered.detail["ended"] == "idp_session"
    assert (await laptop.get(gateway.url + "/chat/", headers=JSON)).status_code == 401
    assert (await phone.get(gateway.url + "/chat/", headers=JSON)).status_code == 200  # another IdP session


async def test_a_session_a_new_login_replaced_is_ended_again_after_a_restart(
    gateway: Deployment, own_redis: RedisServer
) -> None:
    """A login ends the session the browser had (session fixation, ASVS 7.2.4): an end like a logout's."""
    alice = await gateway.login("alice")
    copy = str(alice.cookies.get(gateway.services.cookies.session_name))
    assert _command(own_redis, "SAVE").startswith(b"+OK")
    await login(gateway.url, "alice", DEMO_PASSWORD, client=alice)
    assert await _with_cookie(gateway, copy) == 401

    _restart_from_snapshot(own_redis)
    assert _session_keys(own_redis) == 1  # the snapshot's: the replaced session

    await eventually(lambda: _keys_left(own_redis, 0), timeout=20)
    assert await _with_cookie(gateway, copy) == 401
    [recovered] = await eventually(lambda: _recovery_records(gateway, "alice"), timeout=10)
    assert recovered.detail is not None and recovered.detail["ended"] == "logout"


async def test_a_sign_in_right_after_an_end_everywhere_is_not_ended_by_the_sweep_after_a_restart(
    gateway: Deployment, own_redis: RedisServer
) -> None:
    """The IdP ends every session of alice (a back-channel logout naming her ``sub`` only) and she signs in again at
    once, inside the clock margin after the end. Her login read the end as saved (``SessionData.after_ends``), so the
    sweep after a Redis restart does not end her new session; before, it did, at every restart for an idle timeout.
    Bob's sessions, ended the same way after the snapshot, come back with the restart and are ended again: the
    sweep did run."""
    laptop = await gateway.login("alice")
    alice = (await _session_of(gateway, laptop)).data.subject
    assert (await _post(gateway, _token(gateway, sub=alice))).status_code == 200
    again = await gateway.login("alice")
    assert len((await _session_of(gateway, again)).data.after_ends) == 1  # the end, saved before this login
    bob_client = await gateway.login("bob")
    bob_agent = await gateway.services.agents.find("bob")
    assert bob_agent is not None
    [bob_session] = await gateway.services.sessions.sessions_of(bob_agent.id, time.time())
    bob = bob_session.data.subject
    assert _command(own_redis, "SAVE").startswith(b"+OK")  # the snapshot: alice's new session and bob's
    assert (await _post(gateway, _token(gateway, sub=bob))).status_code == 200
    assert (await bob_client.get(gateway.url + "/chat/", headers=JSON)).status_code == 401

    _restart_from_snapshot(own_redis)
    assert _session_keys(own_redis) == 2  # bob's ended session is back

    [recovered] = await eventually(lambda: _recovery_records(gateway, "bob"), timeout=20)
    assert recovered.detail is not None and recovered.detail["ended"] == "agent"
    assert _session_keys(own_redis) == 1
    assert (await again.get(gateway.url + "/chat/", headers=JSON)).status_code == 200
    assert await _recovery_records(gateway, "alice") == []


async def _keys_left(server: RedisServer, count: int) -> bool:
    return _session_keys(server) == count
